//! The work queue on SQS: a message `{"id"}` per event to deliver; the delivery state in the
//! event's `STATE` item, which every claim and settlement updates conditionally.
//!
//! - **Claim**: receive messages, then `UpdateItem STATE` to `leased` if it is new, queued, or
//!   its lease ran out. A message whose claim is refused is deleted if the event is settled.
//!   If another dispatcher's lease still runs, it is sent again to come back after that lease:
//!   the holder may have been killed, and this may be the event's only message.
//! - **Retry**: a re-send of `{"id"}` with `DelaySeconds` (at most 900: a longer wait takes more
//!   hops, each checked against `STATE.due_at`), then the delete. A backoff by visibility would
//!   spend the message's receive count, and rate limits would push it into the DLQ.
//! - **Dead letter**: `STATE` says `dead` with the reason, the attempts and the last answer;
//!   the DLQ gets `{"id", "reason"}`. The DLQ's own `maxReceiveCount` is only a net for
//!   messages that crash dispatchers.

mod settle;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_dynamodb::operation::update_item::UpdateItemError;
use aws_sdk_dynamodb::types::{ReturnValue, ReturnValuesOnConditionCheckFailure};
use aws_sdk_sqs::types::{MessageSystemAttributeName, MessageSystemAttributeNameForSends};
use relay_core::{
    AttemptOutcome, AttemptRecord, Claim, DeliveryStatus, Settlement, StoreError, Trigger,
    WorkQueue, now_millis,
};

use crate::archive::Archiver;
use crate::items::{META, STATE, State, get_n, get_s, key, n, s};
use crate::outbox::{NewEvent, trace_attribute};
use crate::xray::{Flag, Segment, TraceHeader, new_segment_id};
use crate::{Aws, AwsError};

/// Longest `DelaySeconds` SQS takes.
const MAX_DELAY_SECS: i64 = 900;

/// The `WorkQueue` port over the stack's queue and events table. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqsQueue {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    aws: Aws,
    queue_url: String,
    dlq_url: String,
    /// Each claimed message, by event id, for its settlement.
    held: Mutex<HashMap<String, Held>>,
    next_lease: AtomicI64,
    /// Delivered events' items expire this long after delivery (TTL).
    retention: Duration,
    /// How long a receive waits for messages when the queue is empty.
    wait: Duration,
    /// Receipts of spent messages, deleted in batches by [`delete_spent`].
    spent: tokio::sync::mpsc::UnboundedSender<String>,
    /// Delivered and dead-lettered events, on their way to S3.
    archiver: Archiver,
    /// The oldest event last seen going back to wait for a retry: (id, received at, noted at).
    waiting: Mutex<Option<(String, i64, i64)>>,
}

/// A claimed message: its receipt, and the event's X-Ray trace (`AWSTraceHeader`).
#[derive(Debug)]
struct Held {
    receipt: String,
    trace: Option<TraceHeader>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl SqsQueue {
    /// `retention`: how long a delivered event's items stay before DynamoDB expires them.
    pub async fn new(aws: Aws, retention: Duration) -> Result<Self, AwsError> {
        let (queue_url, dlq_url) = aws.queue_urls().await?;
        let (spent, receipts) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(delete_spent(aws.clone(), queue_url.clone(), receipts));
        let archiver = Archiver::start(aws.clone());
        Ok(SqsQueue {
            inner: Arc::new(Inner {
                aws,
                queue_url,
                dlq_url,
                held: Mutex::default(),
                waiting: Mutex::default(),
                // Tokens from different processes must differ: start from a random point.
                next_lease: AtomicI64::new(fastrand_i64()),
                retention,
                wait: Duration::from_secs(1),
                spent,
                archiver,
            }),
        })
    }

    pub fn queue_url(&self) -> &str {
        &self.inner.queue_url
    }

    pub fn dlq_url(&self) -> &str {
        &self.inner.dlq_url
    }

    /// Writes the settled events gathered so far to the S3 archive, and waits for it: before a
    /// Lambda invocation returns, or a dispatcher stops.
    pub async fn flush_archive(&self) {
        self.inner.archiver.flush().await;
    }

    fn failed(e: AwsError) -> StoreError {
        e.into_store_error()
    }

    /// Claims one event for this lease, or says why not. `carried`: the payload and receive
    /// time, when the message brought them; otherwise they are read from `META`.
    async fn claim_one(
        &self,
        id: &str,
        carried: Option<(String, i64)>,
        trace: Option<&TraceHeader>,
        token: i64,
        now: i64,
        lease: Duration,
    ) -> Result<Option<Claim>, StoreError> {
        let aws = &self.inner.aws;
        let until = now + lease.as_millis() as i64;
        let update = aws
            .dynamodb
            .update_item()
            .table_name(&aws.stack.events_table)
            .set_key(Some(key(id, STATE)))
            .update_expression(
                "SET #status = :leased, lease = :token, lease_until = :until, updated_at = :now, \
                 attempts = if_not_exists(attempts, :zero), tries = if_not_exists(tries, :zero), \
                 next_trigger = if_not_exists(next_trigger, :scheduled), due_at = if_not_exists(due_at, :now)",
            )
            .condition_expression(
                "(attribute_not_exists(#status) OR #status = :queued OR (#status = :leased AND lease_until < :now)) \
                 AND (attribute_not_exists(due_at) OR due_at <= :now)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":leased", s("leased"))
            .expression_attribute_values(":queued", s("queued"))
            .expression_attribute_values(":token", n(token))
            .expression_attribute_values(":until", n(until))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":scheduled", s("scheduled"))
            .return_values(ReturnValue::AllNew)
            .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld)
            .send()
            .await;
        let state = match update {
            Ok(out) => out.attributes.unwrap_or_default(),
            Err(e) => {
                if let Some(UpdateItemError::ConditionalCheckFailedException(c)) =
                    e.as_service_error()
                {
                    let old = c.item().cloned().unwrap_or_default();
                    // This very claim landed and its answer was lost: the SDK's retry finds
                    // the event leased under its own token.
                    let ours = get_s(&old, "status") == Some("leased")
                        && get_n::<i64>(&old, "lease") == Some(token);
                    if ours {
                        return self.claimed(id, carried, old, token, now).await;
                    }
                    if let Some(back_at) = comes_back_at(&State::read(id, &old), now) {
                        // Not settled: this copy goes back to wait rather than be dropped.
                        let event = NewEvent {
                            id: id.to_owned(),
                            carried,
                            trace: trace.cloned(),
                        };
                        self.send(&event, back_at - now)
                            .await
                            .map_err(Self::failed)?;
                    }
                    return Ok(None);
                }
                return Err(Self::failed(AwsError::from_sdk("the events table", e)));
            }
        };
        self.claimed(id, carried, state, token, now).await
    }

    /// The claim of an event whose `STATE` now says it is leased under `token`.
    async fn claimed(
        &self,
        id: &str,
        carried: Option<(String, i64)>,
        state: crate::items::Item,
        token: i64,
        now: i64,
    ) -> Result<Option<Claim>, StoreError> {
        let aws = &self.inner.aws;
        let (payload, received_at) = match carried {
            Some(carried) => carried,
            None => {
                let meta = aws
                    .dynamodb
                    .get_item()
                    .table_name(&aws.stack.events_table)
                    .set_key(Some(key(id, META)))
                    .consistent_read(true)
                    .send()
                    .await
                    .map_err(|e| Self::failed(AwsError::from_sdk("the events table", e)))?
                    .item
                    .unwrap_or_default();
                let Some(payload) = get_s(&meta, "payload") else {
                    tracing::error!(event_id = ?id, "a queued event has no stored payload; skipping it");
                    return Ok(None);
                };
                (
                    payload.to_owned(),
                    get_n(&meta, "received_at").unwrap_or(now),
                )
            }
        };
        let trigger = get_s(&state, "next_trigger")
            .and_then(Trigger::parse)
            .unwrap_or(Trigger::Scheduled);
        Ok(Some(Claim {
            event_id: id.to_owned(),
            payload,
            received_at,
            attempts: get_n(&state, "attempts").unwrap_or(0),
            tries: get_n(&state, "tries").unwrap_or(0),
            trigger,
            lease: token,
        }))
    }

    /// An update of the event's `STATE` on condition that the claim's lease still holds, with
    /// `#status`, `:leased`, `:token` and `:now` bound.
    pub(super) fn under_lease(
        &self,
        claim: &Claim,
        now: i64,
    ) -> aws_sdk_dynamodb::operation::update_item::builders::UpdateItemFluentBuilder {
        let aws = &self.inner.aws;
        aws.dynamodb
            .update_item()
            .table_name(&aws.stack.events_table)
            .set_key(Some(key(&claim.event_id, STATE)))
            .condition_expression("#status = :leased AND lease = :token")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":leased", s("leased"))
            .expression_attribute_values(":token", n(claim.lease))
            .expression_attribute_values(":now", n(now))
    }

    /// `STATE` back to queued under the claim's lease, due at `due_at` (or when it was due):
    /// a claim given back, with no attempt.
    async fn requeue(&self, claim: &Claim, due_at: Option<i64>) -> Result<(), AwsError> {
        let mut update = self
            .under_lease(claim, now_millis())
            .expression_attribute_values(":queued", s("queued"));
        update = match due_at {
            Some(due) => update
                .update_expression(
                    "SET #status = :queued, due_at = :due, lease_until = :now, updated_at = :now",
                )
                .expression_attribute_values(":due", n(due)),
            None => update
                .update_expression("SET #status = :queued, lease_until = :now, updated_at = :now"),
        };
        update
            .send()
            .await
            .map(drop)
            .map_err(|e| AwsError::from_sdk("the events table", e))
    }

    /// Queues the event to be received after `delay_ms` (as much of it as SQS allows).
    pub(crate) async fn send(&self, event: &NewEvent, delay_ms: i64) -> Result<(), AwsError> {
        send_event(&self.inner.aws, &self.inner.queue_url, event, delay_ms).await
    }

    /// Deletes a spent message, soon, in a batch with others. Nothing depends on it: a message
    /// not deleted comes back after its lease, its claim is refused since `STATE` says the
    /// event was settled, and it is deleted then.
    fn delete(&self, receipt: String) {
        let _ = self.inner.spent.send(receipt);
    }

    /// When the oldest event this dispatcher saw going back to wait (a retry) in the last
    /// minute was received, unless it was settled since.
    pub fn oldest_waiting(&self) -> Option<i64> {
        let waiting = lock(&self.inner.waiting);
        let (_, received_at, noted_at) = waiting.as_ref()?;
        (now_millis() - noted_at <= 60_000).then_some(*received_at)
    }

    fn note_waiting(&self, claim: &Claim, settlement: &Settlement, now: i64) {
        let mut waiting = lock(&self.inner.waiting);
        match settlement {
            Settlement::Retry { .. } => {
                let replace = waiting.as_ref().is_none_or(|(_, received_at, noted_at)| {
                    claim.received_at <= *received_at || now - noted_at > 60_000
                });
                if replace {
                    *waiting = Some((claim.event_id.clone(), claim.received_at, now));
                }
            }
            _ => {
                if waiting
                    .as_ref()
                    .is_some_and(|(id, ..)| *id == claim.event_id)
                {
                    *waiting = None;
                }
            }
        }
    }

    fn take_held(&self, id: &str) -> Option<Held> {
        lock(&self.inner.held).remove(id)
    }

    /// Sends the X-Ray segments emitted so far, before a Lambda function is frozen.
    pub async fn flush_trace(&self) {
        self.inner.aws.tracer.flush().await;
    }

    /// One attempt's segment in the event's trace, with the target call as its subsegment.
    fn trace_attempt(
        &self,
        claim: &Claim,
        trace: &TraceHeader,
        attempt: &AttemptRecord,
        settlement: &Settlement,
    ) {
        let (start, end) = (
            attempt.started_at,
            attempt.started_at + attempt.duration_ms as i64,
        );
        let settled = match settlement {
            Settlement::Delivered => "delivered",
            Settlement::Retry { .. } => "retry",
            Settlement::Dead { .. } => "dead",
        };
        let flag = match attempt.outcome {
            AttemptOutcome::Delivered => None,
            AttemptOutcome::RateLimited => Some(Flag::Throttle),
            AttemptOutcome::Permanent => Some(Flag::Error),
            AttemptOutcome::Transient => Some(Flag::Fault),
        };
        let mut target = Segment::new("target", new_segment_id(), trace, start, end).http(
            "POST",
            None,
            attempt.http_status,
        );
        let mut segment = Segment::new("relay-dispatcher", new_segment_id(), trace, start, end)
            .annotate("event_id", claim.event_id.as_str())
            .annotate("attempt", claim.tries + 1)
            .annotate("outcome", attempt.outcome.as_str())
            .annotate("settled", settled)
            .annotate("trigger", attempt.trigger.as_str())
            .metadata("detail", attempt.detail.as_str());
        if let Some(flag) = flag {
            target = target.flag(flag);
            segment = segment.flag(flag);
        }
        self.inner
            .aws
            .tracer
            .emit(&segment.subsegment(target, "remote"));
    }

    /// Claims the events of messages already received (by a receive, or handed to a Lambda by
    /// its event source mapping). Returns the claims, and the messages whose claim failed (the
    /// state could not be read or written), to be tried again.
    pub async fn claim_messages(
        &self,
        messages: Vec<Received>,
        lease: Duration,
    ) -> (Vec<Claim>, Vec<(String, StoreError)>) {
        let now = now_millis();
        // Each message's claim is two calls; the batch's go at once.
        let mut pending = tokio::task::JoinSet::new();
        let mut seen = std::collections::HashSet::new();
        for message in messages {
            // A token per claim: a refusal that shows this token is this claim's own write
            // whose answer was lost, never another claim's.
            let token = self.inner.next_lease.fetch_add(1, Relaxed);
            let body = serde_json::from_str::<serde_json::Value>(&message.body).ok();
            let id = body
                .as_ref()
                .and_then(|v| v.get("id")?.as_str().map(str::to_owned));
            // The outbox sends at least once, so one receive can bring two messages of one
            // event. The first is claimed (or comes back, or is spent, as its claim decides);
            // a second is a spare copy, whatever happens to the first, and claiming both at
            // once would race two writes on one item.
            if let Some(id) = &id
                && !seen.insert(id.clone())
            {
                tracing::debug!(event_id = ?id, "a second message of an event in one receive; deleting the spare");
                self.delete(message.receipt);
                continue;
            }
            let carried = body.as_ref().and_then(|v| {
                let payload = v.get("payload")?.as_str()?.to_owned();
                Some((payload, v.get("received_at")?.as_i64()?))
            });
            // `AWSTraceHeader`, or the body's copy (which survives any sender's quirks).
            let trace = message
                .trace
                .as_deref()
                .or_else(|| body.as_ref()?.get("trace")?.as_str())
                .and_then(TraceHeader::parse);
            let queue = self.clone();
            pending.spawn(async move {
                let Some(id) = id else {
                    tracing::error!(body = %message.body, "a message without an event id; deleting it");
                    queue.delete(message.receipt);
                    return (message.message_id, Ok(None));
                };
                let claimed = match queue
                    .claim_one(&id, carried, trace.as_ref(), token, now, lease)
                    .await
                {
                    Ok(Some(claim)) => {
                        let held = Held {
                            receipt: message.receipt,
                            trace,
                        };
                        lock(&queue.inner.held).insert(id, held);
                        Ok(Some(claim))
                    }
                    // Settled, held elsewhere, or not due: this copy is done with.
                    Ok(None) => {
                        queue.delete(message.receipt);
                        Ok(None)
                    }
                    Err(e) => Err(e),
                };
                (message.message_id, claimed)
            });
        }
        let mut claims = Vec::new();
        let mut failed = Vec::new();
        while let Some(joined) = pending.join_next().await {
            match joined {
                Ok((_, Ok(Some(claim)))) => claims.push(claim),
                Ok((_, Ok(None))) => {}
                Ok((message_id, Err(e))) => failed.push((message_id, e)),
                Err(e) => tracing::error!(error = %e, "a claim task failed"),
            }
        }
        (claims, failed)
    }
}

/// When a message whose claim `state` refused at `now` must be seen again, or `None` if the
/// event is settled and the message is spent.
///
/// - Queued but not due: it came back after the longest delay SQS allows.
/// - Leased and the lease still running: another dispatcher holds the event. If that one was
///   killed, this message may be the event's only one (a visibility timeout counts from the
///   receive, the lease from the claim after it), so it must outlive the lease.
fn comes_back_at(state: &State, now: i64) -> Option<i64> {
    if matches!(
        state.status,
        DeliveryStatus::Delivered | DeliveryStatus::Dead
    ) {
        return None;
    }
    let due = state.due_at.filter(|due| *due > now);
    let lease_end = (state.status == DeliveryStatus::Leased)
        .then_some(state.lease_until)
        .flatten()
        .filter(|until| *until >= now)
        .map(|until| until + LEASE_MARGIN_MS);
    // An unsettled event's message is never dropped: whichever comes later (`None` is least).
    due.max(lease_end)
}

/// A message held back for another dispatcher's lease returns this long after it ends, so the
/// lease has run out by the time it is claimed (SQS delays are whole seconds).
const LEASE_MARGIN_MS: i64 = 1000;

/// Queues `event` on `queue_url`, to be received after `delay_ms` (as much of it as SQS
/// allows), with its trace header.
pub(crate) async fn send_event(
    aws: &Aws,
    queue_url: &str,
    event: &NewEvent,
    delay_ms: i64,
) -> Result<(), AwsError> {
    let delay = (delay_ms.max(0) as f64 / 1000.0).ceil() as i64;
    let mut send = aws
        .sqs
        .send_message()
        .queue_url(queue_url)
        .message_body(event.body())
        .delay_seconds(delay.min(MAX_DELAY_SECS) as i32);
    // The same trace, under the same forwarding segment: attempts are its siblings.
    if let Some(trace) = &event.trace {
        send = send.message_system_attributes(
            MessageSystemAttributeNameForSends::AwsTraceHeader,
            trace_attribute(trace),
        );
    }
    send.send()
        .await
        .map_err(|e| AwsError::from_sdk("the work queue", e))?;
    Ok(())
}

/// Deletes spent messages ten per call: whatever gathered while the previous call was out.
/// Ends when the last clone of the queue is dropped, after the deletes asked for.
async fn delete_spent(
    aws: Aws,
    queue_url: String,
    mut receipts: tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    let mut batch = Vec::with_capacity(10);
    while receipts.recv_many(&mut batch, 10).await > 0 {
        let entries = batch
            .drain(..)
            .enumerate()
            .filter_map(|(i, receipt)| {
                aws_sdk_sqs::types::DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .build()
                    .ok()
            })
            .collect();
        let deleted = aws
            .sqs
            .delete_message_batch()
            .queue_url(&queue_url)
            .set_entries(Some(entries))
            .send()
            .await;
        match deleted {
            Ok(out) if !out.failed.is_empty() => tracing::debug!(
                failed = out.failed.len(),
                "some spent messages were not deleted; they come back and are dropped then"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(
                error = %AwsError::from_sdk("the work queue", e),
                "cannot delete spent messages; they come back after their lease and are dropped then"
            ),
        }
    }
}

/// A message as received, by a receive or from a Lambda event.
#[derive(Debug, Clone)]
pub struct Received {
    pub message_id: String,
    pub receipt: String,
    pub body: String,
    /// Its `AWSTraceHeader` system attribute: the event's X-Ray trace.
    pub trace: Option<String>,
}

fn fastrand_i64() -> i64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    (i64::from(nanos) << 20) ^ i64::from(std::process::id())
}

impl WorkQueue for SqsQueue {
    async fn claim(&self, max: usize, lease: Duration) -> Result<Vec<Claim>, StoreError> {
        let received = self
            .inner
            .aws
            .sqs
            .receive_message()
            .queue_url(&self.inner.queue_url)
            .max_number_of_messages(max.clamp(1, 10) as i32)
            // Hidden until just past the lease that the claim starts a moment later: a
            // dispatcher that dies holding it leaves a message the next one can claim.
            .visibility_timeout((lease.as_millis().div_ceil(1000) + 1).clamp(1, 43_200) as i32)
            .wait_time_seconds(self.inner.wait.as_secs() as i32)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .map_err(|e| Self::failed(AwsError::from_sdk("the work queue", e)))?;
        let messages = received
            .messages
            .unwrap_or_default()
            .into_iter()
            .map(|m| Received {
                trace: m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::AwsTraceHeader))
                    .cloned(),
                message_id: m.message_id.unwrap_or_default(),
                receipt: m.receipt_handle.unwrap_or_default(),
                body: m.body.unwrap_or_default(),
            })
            .collect();
        let (claims, failed) = self.claim_messages(messages, lease).await;
        // Claims that did succeed are kept: their messages return after the lease if unused.
        match (claims.is_empty(), failed.into_iter().next()) {
            (true, Some((_, e))) => Err(e),
            _ => Ok(claims),
        }
    }

    async fn settle(
        &self,
        claim: &Claim,
        attempt: AttemptRecord,
        settlement: Settlement,
    ) -> Result<(), StoreError> {
        let now = now_millis();
        self.record_settlement(claim, &attempt, &settlement, now)
            .await?;
        self.note_waiting(claim, &settlement, now);
        self.archive_settled(claim, &attempt, &settlement, now);
        // The state is recorded; now the messages follow it.
        self.move_message(claim, &attempt, &settlement, now).await;
        Ok(())
    }

    async fn release(&self, claims: Vec<Claim>) -> Result<(), StoreError> {
        let aws = &self.inner.aws;
        for claim in claims {
            if let Err(e) = self.requeue(&claim, None).await {
                tracing::debug!(event_id = ?claim.event_id, error = %e, "releasing a claim");
            }
            if let Some(Held { receipt, .. }) = self.take_held(&claim.event_id) {
                let _ = aws
                    .sqs
                    .change_message_visibility()
                    .queue_url(&self.inner.queue_url)
                    .receipt_handle(receipt)
                    .visibility_timeout(0)
                    .send()
                    .await;
            }
        }
        // Release is the dispatcher's last call before it stops: what it settled goes out now.
        self.flush_archive().await;
        self.flush_trace().await;
        Ok(())
    }

    /// `STATE` back to queued, due at `until`, under the claim's lease; then the message is
    /// sent again with that delay and the received one deleted, as a retry's is, so that no
    /// receive is spent on a hold however long it lasts.
    async fn defer(&self, claims: Vec<Claim>, until: i64) -> Result<(), StoreError> {
        for claim in claims {
            let now = now_millis();
            if let Err(e) = self.requeue(&claim, Some(until)).await {
                tracing::debug!(event_id = ?claim.event_id, error = %e, "deferring a claim");
                continue;
            }
            let held = self.take_held(&claim.event_id);
            let mut event = NewEvent::from_image(
                claim.event_id.clone(),
                Some(&claim.payload),
                Some(claim.received_at),
            );
            event.trace = held.as_ref().and_then(|h| h.trace.clone());
            match self.send(&event, until - now).await {
                Ok(()) => {
                    if let Some(Held { receipt, .. }) = held {
                        self.delete(receipt);
                    }
                }
                // The received message comes back after its lease, and is deferred again.
                Err(e) => {
                    tracing::warn!(event_id = ?claim.event_id, error = %e, "deferred, but not queued again")
                }
            }
        }
        Ok(())
    }

    async fn wait_for_work(&self, _at_most: Duration) {
        // A receive long-polls by itself: the next claim is the wait.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::items::Item;

    fn state(status: &str, due_at: i64, lease_until: i64) -> State {
        let item: Item = HashMap::from([
            ("status".to_owned(), s(status)),
            ("due_at".to_owned(), n(due_at)),
            ("lease_until".to_owned(), n(lease_until)),
        ]);
        State::read("e", &item)
    }

    #[test]
    fn a_refused_message_is_dropped_only_once_its_event_is_settled() {
        let now = 10_000;
        assert_eq!(
            comes_back_at(&state("queued", 15_000, 0), now),
            Some(15_000)
        );
        assert_eq!(
            comes_back_at(&state("leased", 0, 12_000), now),
            Some(12_000 + LEASE_MARGIN_MS),
            "held by a dispatcher that may be dead"
        );
        assert_eq!(
            comes_back_at(&state("leased", 15_000, 3_000), now),
            Some(15_000),
            "whatever refused it, an unsettled event's message is kept"
        );
        assert_eq!(comes_back_at(&state("delivered", 0, 12_000), now), None);
        assert_eq!(comes_back_at(&state("dead", 0, 12_000), now), None);
    }
}
