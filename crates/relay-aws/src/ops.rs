//! The operator's port on AWS: `relay trace`, `relay dlq` and `relay status` with
//! `--backend aws`, from a laptop or a CI job with credentials for the stack.
//!
//! Why one file over 700 lines: the five operations read the same items (`META`, `STATE`, the
//! archive lines, the DLQ's messages) through the same private readers; each operation's own
//! code is short.
//!
//! - **trace** joins the event's `META` and `STATE` items (one `Query`), its X-Ray trace
//!   (`BatchGetTraces` by the id stored on it), and, once the items have expired, its line in
//!   the S3 archive.
//! - **status** reads the queues' attributes and the fleet's item, where every dispatcher
//!   reports its last minute once a second (`control::read_status`).
//! - **dead letters** are `STATE` items with `status = dead` (a scan: the DLQ is the exception,
//!   and an operator's read). A redrive makes each one `queued` again (conditionally, so only a
//!   dead letter is touched) with a fresh attempt count and the trigger `redrive`, sends its
//!   message, and deletes the DLQ's now-stale copies. A purge copies each to the archive first
//!   and only then deletes its items and its DLQ copies.

use std::collections::HashSet;
use std::time::Duration;

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_sqs::types::QueueAttributeName;
use relay_core::delivery::DeliveryStatus;
use relay_core::hold::Pause;
use relay_core::ops::{
    ArchiveRef, ArchivedId, DeadLetterGroup, DeadLetterView, DeliveryState, DispatcherReport,
    DlqFilter, EventPage, EventQuery, EventTrace, Operations, PurgeReport, RedriveReport,
    StatusReport, TraceRef, TraceSegment,
};
use relay_core::{StoreError, now_millis};

use crate::archive::ArchiveRecord;
use crate::items::{Item, META, STATE, State, get_n, get_s, key, n, pk, s};
use crate::outbox::NewEvent;
use crate::{Aws, AwsError};

/// Days of archive partitions `trace` searches for an expired event, and at most how many
/// objects it reads.
const ARCHIVE_DAYS: u32 = 45;
const ARCHIVE_OBJECTS: usize = 2_000;

/// A DLQ message being looked at.
struct DlqMessage {
    /// The event it is about, if it names one.
    id: Option<String>,
    /// How often it was received (in the work queue, then here).
    receives: u32,
    receipt: String,
}

/// How long past its due time a queued event's message must have been missing before a DLQ
/// copy is taken to be its only one.
const OVERDUE_MS: i64 = 60_000;

/// The `Operations` port over a stack.
#[derive(Debug, Clone)]
pub struct AwsOps {
    aws: Aws,
    queue_url: String,
    dlq_url: String,
}

fn failed(e: AwsError) -> StoreError {
    e.into_store_error()
}

impl AwsOps {
    /// Looks up the stack's queues: the first call, which proves the stack is reachable.
    pub async fn connect(aws: Aws) -> Result<Self, AwsError> {
        let (queue_url, dlq_url) = aws.queue_urls().await?;
        Ok(AwsOps {
            aws,
            queue_url,
            dlq_url,
        })
    }

    /// The event's `META` and `STATE` items, in one strongly consistent query.
    async fn items(&self, id: &str) -> Result<(Option<Item>, Option<Item>), AwsError> {
        let out = self
            .aws
            .dynamodb
            .query()
            .table_name(&self.aws.stack.events_table)
            .key_condition_expression("pk = :pk")
            .expression_attribute_values(":pk", s(pk(id)))
            .consistent_read(true)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("the events table", e))?;
        let mut meta = None;
        let mut state = None;
        for item in out.items.unwrap_or_default() {
            match get_s(&item, "sk") {
                Some(META) => meta = Some(item),
                Some(STATE) => state = Some(item),
                _ => {}
            }
        }
        Ok((meta, state))
    }

    async fn segments(&self, trace_id: &str) -> Vec<TraceSegment> {
        match crate::xray::fetch_trace(&self.aws, trace_id).await {
            Ok(docs) => docs.iter().filter_map(segment).collect(),
            Err(e) => {
                tracing::warn!(%trace_id, error = %e, "cannot read the X-Ray trace; showing the stored history only");
                Vec::new()
            }
        }
    }

    async fn archived_trace(&self, id: &str) -> Result<Option<EventTrace>, AwsError> {
        let Some((location, r)) =
            crate::archive::find(&self.aws, id, ARCHIVE_DAYS, ARCHIVE_OBJECTS).await?
        else {
            return Ok(None);
        };
        let dead = r.status == "dead";
        let mut segments = Vec::new();
        if let Some(trace_id) = &r.trace_id {
            segments = self.segments(trace_id).await;
        }
        Ok(Some(EventTrace {
            event_id: r.id.clone(),
            payload: r.event.clone(),
            received_at: r.received_at,
            delivery: DeliveryState {
                status: if dead {
                    DeliveryStatus::Dead
                } else {
                    DeliveryStatus::Delivered
                },
                attempts: r.attempts,
                tries: r.attempts,
                due_at: None,
                delivered_at: (!dead).then_some(r.settled_at),
                last_error: r.reason.clone(),
                next_trigger: "scheduled".into(),
            },
            attempts: Vec::new(),
            dead_letter: dead.then(|| DeadLetterView {
                event_id: r.id.clone(),
                reason: r.reason.clone().unwrap_or_default(),
                attempts: r.attempts,
                last_response: Some(r.last_answer.clone()),
                dead_at: r.settled_at,
            }),
            trace_ids: r
                .trace_id
                .iter()
                .map(|id| TraceRef {
                    system: "xray".into(),
                    id: id.clone(),
                })
                .collect(),
            segments,
            acked_before_flush: None,
            paused: None,
            archived: Some(ArchiveRef {
                location,
                why: r.status.clone(),
                archived_at: r.settled_at,
            }),
        }))
    }

    async fn queue_attributes(&self, url: &str) -> Result<(u64, u64, u64), AwsError> {
        let out = self
            .aws
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("the queue's attributes", e))?;
        let attrs = out.attributes.unwrap_or_default();
        let get = |name: QueueAttributeName| -> u64 {
            attrs.get(&name).and_then(|v| v.parse().ok()).unwrap_or(0)
        };
        Ok((
            get(QueueAttributeName::ApproximateNumberOfMessages),
            get(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
            get(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
        ))
    }

    /// Every dead letter, newest first (a scan of the events table for dead `STATE` items).
    async fn all_dead(&self, filter: &DlqFilter) -> Result<Vec<DeadLetterView>, AwsError> {
        let mut expression = "sk = :state AND #status = :dead".to_owned();
        let mut scan = self
            .aws
            .dynamodb
            .scan()
            .table_name(&self.aws.stack.events_table)
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":state", s(STATE))
            .expression_attribute_values(":dead", s("dead"))
            .consistent_read(true);
        if let Some(since) = filter.since {
            expression.push_str(" AND dead_at >= :since");
            scan = scan.expression_attribute_values(":since", n(since));
        }
        if let Some(before) = filter.before {
            expression.push_str(" AND dead_at < :before");
            scan = scan.expression_attribute_values(":before", n(before));
        }
        let mut pages = scan.filter_expression(expression).into_paginator().send();
        let mut letters = Vec::new();
        let reason = filter.reason.as_ref().map(|r| r.to_lowercase());
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| AwsError::from_sdk("the events table", e))?;
            for item in page.items() {
                let Some(id) = get_s(item, "pk").and_then(|pk| pk.strip_prefix("EVT#")) else {
                    continue;
                };
                let Some(dead) = State::read(id, item).dead else {
                    continue;
                };
                if reason
                    .as_ref()
                    .is_some_and(|r| !dead.reason.to_lowercase().contains(r))
                    || filter
                        .ids
                        .as_ref()
                        .is_some_and(|ids| !ids.contains(&dead.event_id))
                {
                    continue;
                }
                letters.push(dead);
            }
        }
        letters.sort_by(|a, b| b.dead_at.cmp(&a.dead_at).then(a.event_id.cmp(&b.event_id)));
        if let Some(limit) = filter.limit {
            letters.truncate(limit);
        }
        Ok(letters)
    }

    /// The DLQ's next few messages not seen yet (hidden for 30 s while they are looked at), or
    /// `None` once a read-through finds nothing new. Messages seen already are shown again.
    async fn next_dlq_messages(
        &self,
        seen: &mut HashSet<String>,
    ) -> Result<Option<Vec<DlqMessage>>, AwsError> {
        use aws_sdk_sqs::types::MessageSystemAttributeName as Attr;
        let messages = self
            .aws
            .sqs
            .receive_message()
            .queue_url(&self.dlq_url)
            .max_number_of_messages(10)
            .visibility_timeout(30)
            .wait_time_seconds(0)
            .message_system_attribute_names(Attr::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("the dead-letter queue", e))?
            .messages
            .unwrap_or_default();
        let mut fresh = Vec::new();
        for m in messages {
            let receipt = m.receipt_handle.clone().unwrap_or_default();
            if !seen.insert(m.message_id.clone().unwrap_or_default()) {
                self.show_again(&receipt).await;
                continue;
            }
            fresh.push(DlqMessage {
                id: m
                    .body
                    .as_deref()
                    .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
                    .and_then(|v| v.get("id")?.as_str().map(str::to_owned)),
                receives: m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&Attr::ApproximateReceiveCount))
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0),
                receipt,
            });
        }
        Ok((!fresh.is_empty()).then_some(fresh))
    }

    /// Deletes a DLQ message, or shows it again at once.
    async fn settle_dlq_message(&self, m: &DlqMessage, keep: bool) -> Result<(), AwsError> {
        if keep {
            self.show_again(&m.receipt).await;
            return Ok(());
        }
        self.aws
            .sqs
            .delete_message()
            .queue_url(&self.dlq_url)
            .receipt_handle(&m.receipt)
            .send()
            .await
            .map_err(|e| AwsError::from_sdk("the dead-letter queue", e))?;
        Ok(())
    }

    async fn show_again(&self, receipt: &str) {
        let _ = self
            .aws
            .sqs
            .change_message_visibility()
            .queue_url(&self.dlq_url)
            .receipt_handle(receipt)
            .visibility_timeout(0)
            .send()
            .await;
    }

    /// Messages SQS moved to the DLQ itself (`maxReceiveCount`: dispatchers took them that
    /// often and never settled them, as when a dispatcher dies on an event) belong to events
    /// that are still queued or leased, which nothing would ever deliver again. Each such
    /// event is settled as a dead letter, with that reason, so that it is listed, traced and
    /// redriven like any other; its message stays as its DLQ copy. An event a live lease
    /// holds, or one due soon (another message will bring it), is left for a later look.
    /// Returns the events settled so.
    pub async fn adopt_dlq(&self) -> Result<Vec<String>, AwsError> {
        let mut adopted = Vec::new();
        let max_receives = self.max_receive_count().await;
        let mut seen = HashSet::new();
        // Enough rounds to see every message of a DLQ of a few thousand; a bigger one is
        // handled as its messages are met again.
        for _ in 0..500 {
            let Some(messages) = self.next_dlq_messages(&mut seen).await? else {
                break;
            };
            for m in messages {
                let Some(id) = &m.id else {
                    tracing::warn!("a DLQ message without an event id: deleting it");
                    self.settle_dlq_message(&m, false).await?;
                    continue;
                };
                let (meta, state) = self.items(id).await?;
                let status = state.as_ref().map(|st| State::read(id, st).status);
                let keep = match (&meta, status) {
                    (None, None) | (_, Some(DeliveryStatus::Delivered)) => false,
                    (_, Some(DeliveryStatus::Dead)) => true,
                    _ => {
                        // The DLQ's own receive count goes on from there: the policy says how many.
                        let times = max_receives.unwrap_or(m.receives);
                        if self.settle_abandoned(id, times).await? {
                            tracing::warn!(event_id = ?id, times, "an event dispatchers died on is a dead letter now");
                            adopted.push(id.clone());
                        }
                        true
                    }
                };
                self.settle_dlq_message(&m, keep).await?;
            }
        }
        Ok(adopted)
    }

    /// The work queue's `maxReceiveCount`, from its redrive policy.
    async fn max_receive_count(&self) -> Option<u32> {
        let out = self
            .aws
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::RedrivePolicy)
            .send()
            .await
            .ok()?;
        let policy: serde_json::Value =
            serde_json::from_str(out.attributes()?.get(&QueueAttributeName::RedrivePolicy)?)
                .ok()?;
        let n = &policy["maxReceiveCount"];
        n.as_u64()
            .or_else(|| n.as_str()?.parse().ok())
            .map(|n| n as u32)
    }

    /// Settles an event nothing will deliver as dead: only if it is still unclaimed, queued
    /// and overdue, or leased by a lease that ran out. `false` when it is not (any more).
    async fn settle_abandoned(&self, id: &str, times: u32) -> Result<bool, AwsError> {
        let now = now_millis();
        let reason = format!(
            "dispatchers died on it {times} times: SQS moved its message to the dead-letter queue \
             after {times} receives without a settlement (maxReceiveCount). Look for what kills \
             the dispatcher on it (its log, the Lambda's errors) before redriving"
        );
        let update = self
            .aws
            .dynamodb
            .update_item()
            .table_name(&self.aws.stack.events_table)
            .set_key(Some(key(id, STATE)))
            .update_expression(
                "SET #status = :dead, dead_at = :now, reason = :reason, last_error = :reason, \
                 last_response = :none, updated_at = :now, attempts = if_not_exists(attempts, :zero), \
                 tries = if_not_exists(tries, :zero), next_trigger = if_not_exists(next_trigger, :scheduled) \
                 REMOVE lease",
            )
            .condition_expression(
                "attribute_not_exists(#status) OR (#status = :queued AND (attribute_not_exists(due_at) OR due_at < :overdue)) \
                 OR (#status = :leased AND lease_until < :now)",
            )
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":dead", s("dead"))
            .expression_attribute_values(":queued", s("queued"))
            .expression_attribute_values(":leased", s("leased"))
            .expression_attribute_values(":now", n(now))
            .expression_attribute_values(":overdue", n(now - OVERDUE_MS))
            .expression_attribute_values(":reason", s(reason))
            .expression_attribute_values(":none", s("(no answer: no attempt was recorded)"))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":scheduled", s("scheduled"))
            .send()
            .await;
        match update {
            Ok(_) => Ok(true),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(false)
            }
            Err(e) => Err(AwsError::from_sdk("the events table", e)),
        }
    }

    /// Deletes the DLQ's copies of events that are no longer dead letters: `gone` (just
    /// redriven or purged), delivered, or no longer stored. A copy of an event still waiting
    /// or in flight is never deleted: it may be the only message that event has. Returns how
    /// many it deleted.
    async fn clean_dlq(&self, gone: &HashSet<String>) -> Result<usize, AwsError> {
        let mut deleted = 0;
        let mut seen = HashSet::new();
        for _ in 0..500 {
            let Some(messages) = self.next_dlq_messages(&mut seen).await? else {
                break;
            };
            for m in messages {
                let stale = match &m.id {
                    None => true,
                    Some(id) if gone.contains(id) => true,
                    Some(id) => {
                        let (meta, state) = self.items(id).await?;
                        let status = state.as_ref().and_then(|st| get_s(st, "status"));
                        status == Some(DeliveryStatus::Delivered.as_str())
                            || (meta.is_none() && state.is_none())
                    }
                };
                deleted += usize::from(stale);
                self.settle_dlq_message(&m, !stale).await?;
            }
        }
        Ok(deleted)
    }

    /// Makes one dead letter queued again, due at `due`, and sends its message. `false` when
    /// it is not a dead letter.
    async fn redrive_one(&self, id: &str, due: i64) -> Result<bool, AwsError> {
        let now = now_millis();
        let update = self
            .aws
            .dynamodb
            .update_item()
            .table_name(&self.aws.stack.events_table)
            .set_key(Some(key(id, STATE)))
            .update_expression(
                "SET #status = :queued, attempts = :zero, due_at = :due, next_trigger = :redrive, \
                 updated_at = :now REMOVE reason, dead_at, last_response, lease",
            )
            .condition_expression("#status = :dead")
            .expression_attribute_names("#status", "status")
            .expression_attribute_values(":queued", s("queued"))
            .expression_attribute_values(":dead", s("dead"))
            .expression_attribute_values(":zero", n(0))
            .expression_attribute_values(":due", n(due))
            .expression_attribute_values(":redrive", s("redrive"))
            .expression_attribute_values(":now", n(now))
            .send()
            .await;
        if let Err(e) = update {
            if e.as_service_error()
                .is_some_and(|e| e.is_conditional_check_failed_exception())
            {
                return Ok(false);
            }
            return Err(AwsError::from_sdk("the events table", e));
        }
        // The message: the payload and trace when `META` has them (the claim reads it
        // otherwise), delayed until it is due.
        let (meta, _) = self.items(id).await?;
        let mut event = NewEvent::from(id);
        if let Some(meta) = &meta {
            event = NewEvent::from_image(
                id.to_owned(),
                get_s(meta, "payload"),
                get_n(meta, "received_at"),
            )
            .traced(get_s(meta, "trace_id"), get_s(meta, "trace_parent"));
        }
        crate::queue::send_event(&self.aws, &self.queue_url, &event, due - now).await?;
        Ok(true)
    }
}

/// An X-Ray segment document, as the port shows it.
fn segment(doc: &serde_json::Value) -> Option<TraceSegment> {
    let ms = |key: &str| doc.get(key)?.as_f64().map(|s| (s * 1000.0).round() as i64);
    let mut detail = serde_json::Map::new();
    for key in [
        "annotations",
        "http",
        "error",
        "fault",
        "throttle",
        "subsegments",
    ] {
        if let Some(v) = doc.get(key) {
            detail.insert(key.into(), v.clone());
        }
    }
    Some(TraceSegment {
        name: doc.get("name")?.as_str()?.to_owned(),
        id: doc.get("id")?.as_str()?.to_owned(),
        parent_id: doc
            .get("parent_id")
            .and_then(|p| p.as_str())
            .map(str::to_owned),
        start: ms("start_time")?,
        end: ms("end_time").unwrap_or_default(),
        detail: serde_json::Value::Object(detail),
    })
}

impl Operations for AwsOps {
    async fn trace(&self, id: &str) -> Result<Option<EventTrace>, StoreError> {
        let (meta, state) = self.items(id).await.map_err(failed)?;
        let Some(meta) = meta else {
            // Expired from DynamoDB: the archive has it, if it was ever settled.
            return self.archived_trace(id).await.map_err(failed);
        };
        let payload = get_s(&meta, "payload").unwrap_or("null");
        let received_at = get_n(&meta, "received_at").unwrap_or(0);
        let state = state.map(|st| State::read(id, &st));
        let (status, due_at) = match &state {
            Some(st) => (
                st.status,
                match st.status {
                    DeliveryStatus::Queued => st.due_at,
                    DeliveryStatus::Leased => st.lease_until,
                    _ => None,
                },
            ),
            // Stored, not claimed yet: on its way through the outbox and the queue.
            None => (DeliveryStatus::Queued, Some(received_at)),
        };
        let trace_id = get_s(&meta, "trace_id").map(str::to_owned);
        let segments = match &trace_id {
            Some(trace_id) => self.segments(trace_id).await,
            None => Vec::new(),
        };
        Ok(Some(EventTrace {
            event_id: id.to_owned(),
            payload: serde_json::from_str(payload)
                .unwrap_or_else(|_| serde_json::Value::String(payload.to_owned())),
            received_at,
            delivery: DeliveryState {
                status,
                attempts: state.as_ref().map_or(0, |s| s.attempts),
                tries: state.as_ref().map_or(0, |s| s.tries),
                due_at,
                delivered_at: state.as_ref().and_then(|s| s.delivered_at),
                last_error: state.as_ref().and_then(|s| s.last_error.clone()),
                next_trigger: state
                    .as_ref()
                    .map_or_else(|| "scheduled".to_owned(), |s| s.next_trigger.clone()),
            },
            attempts: state
                .as_ref()
                .map(|s| s.history.clone())
                .unwrap_or_default(),
            dead_letter: state.and_then(|s| s.dead),
            trace_ids: trace_id
                .into_iter()
                .map(|id| TraceRef {
                    system: "xray".into(),
                    id,
                })
                .collect(),
            segments,
            acked_before_flush: None,
            paused: match status {
                DeliveryStatus::Queued | DeliveryStatus::Leased => {
                    crate::control::read_status(&self.aws)
                        .await
                        .map_err(failed)?
                        .pause
                }
                _ => None,
            },
            archived: None,
        }))
    }

    async fn pause(&self, pause: Pause) -> Result<Option<Pause>, StoreError> {
        crate::control::pause(&self.aws, &pause)
            .await
            .map_err(failed)
    }

    async fn resume(&self) -> Result<Option<Pause>, StoreError> {
        crate::control::resume(&self.aws).await.map_err(failed)
    }

    async fn status(&self) -> Result<StatusReport, StoreError> {
        let (visible, in_flight, delayed) = self
            .queue_attributes(&self.queue_url)
            .await
            .map_err(failed)?;
        let (dead_visible, dead_hidden, _) =
            self.queue_attributes(&self.dlq_url).await.map_err(failed)?;
        let fleet = crate::control::read_status(&self.aws)
            .await
            .map_err(failed)?;
        Ok(StatusReport {
            now: now_millis(),
            queued: visible + delayed,
            in_flight,
            delivered: fleet.delivered_total,
            dead: dead_visible + dead_hidden,
            oldest_waiting_received_at: fleet.oldest_waiting,
            delivered_last_minute: fleet.delivered_last_minute,
            retried_last_minute: fleet.retried_last_minute,
            dead_lettered_last_minute: fleet.dead_last_minute,
            // Every answer on AWS follows the durable write.
            acked_before_flush: 0,
            dispatcher: fleet.reported_at.map(|at| DispatcherReport {
                rate: fleet.rate.unwrap_or(0.0),
                estimated_limit: fleet.estimate,
                announced: None,
                in_flight: fleet.in_flight,
                reported_at: at,
                events_per_request: fleet.events_per_request.filter(|&n| n > 1),
                max_age_ms: fleet.max_age_ms,
                concurrency_limit: fleet.concurrency_limit,
                circuit: fleet.circuit,
                rate_limited: fleet.rate_limited,
                lessons: fleet.lessons.clone(),
            }),
            // DynamoDB answers each write itself: there is no store to fail in between.
            store_failing: Vec::new(),
            pause: fleet.pause,
        })
    }

    async fn dead_letters(&self, filter: &DlqFilter) -> Result<Vec<DeadLetterView>, StoreError> {
        self.adopt_dlq().await.map_err(failed)?;
        self.all_dead(filter).await.map_err(failed)
    }

    async fn events(&self, query: &EventQuery) -> Result<EventPage, StoreError> {
        crate::listing::events(&self.aws, query).await
    }

    async fn dead_letter_groups(&self) -> Result<Vec<DeadLetterGroup>, StoreError> {
        let all = self.dead_letters(&DlqFilter::default()).await?;
        Ok(relay_core::ops::group_dead_letters(&all))
    }

    async fn redrive(&self, ids: &[String], spread: Duration) -> Result<RedriveReport, StoreError> {
        self.adopt_dlq().await.map_err(failed)?;
        let now = now_millis();
        let step = if ids.len() > 1 {
            spread.as_millis() as f64 / (ids.len() - 1) as f64
        } else {
            0.0
        };
        let mut report = RedriveReport::default();
        for id in ids {
            let due = now + (step * report.redriven.len() as f64) as i64;
            if self.redrive_one(id, due).await.map_err(failed)? {
                report.redriven.push(id.clone());
                continue;
            }
            // Not a dead letter: unknown, not dead, or expired into the archive.
            let (meta, _) = self.items(id).await.map_err(failed)?;
            let archived = match meta {
                Some(_) => None,
                None => crate::archive::find(&self.aws, id, ARCHIVE_DAYS, ARCHIVE_OBJECTS)
                    .await
                    .map_err(failed)?,
            };
            match archived {
                Some((location, _)) => report.archived.push(ArchivedId {
                    id: id.clone(),
                    location,
                }),
                None => report.skipped.push(id.clone()),
            }
        }
        let gone: HashSet<String> = report.redriven.iter().cloned().collect();
        let cleaned = self.clean_dlq(&gone).await.map_err(failed)?;
        tracing::info!(
            redriven = report.redriven.len(),
            stale_dlq_copies_deleted = cleaned,
            "redrive"
        );
        Ok(report)
    }

    async fn purge(&self, filter: &DlqFilter, dry_run: bool) -> Result<PurgeReport, StoreError> {
        if !dry_run {
            self.adopt_dlq().await.map_err(failed)?;
        }
        let letters = self.all_dead(filter).await.map_err(failed)?;
        let mut report = PurgeReport {
            purged: letters.iter().map(|d| d.event_id.clone()).collect(),
            archive: None,
        };
        if dry_run || letters.is_empty() {
            return Ok(report);
        }
        // A copy of each in S3 first; the items go only once it is there.
        let mut records = Vec::new();
        for d in &letters {
            let (meta, _) = self.items(&d.event_id).await.map_err(failed)?;
            let meta = meta.unwrap_or_default();
            let payload = get_s(&meta, "payload").unwrap_or("null");
            records.push(ArchiveRecord {
                id: d.event_id.clone(),
                status: "dead".into(),
                event: serde_json::from_str(payload)
                    .unwrap_or_else(|_| serde_json::Value::String(payload.to_owned())),
                received_at: get_n(&meta, "received_at").unwrap_or(0),
                settled_at: d.dead_at,
                attempts: d.attempts,
                reason: Some(d.reason.clone()),
                last_answer: d.last_response.clone().unwrap_or_default(),
                trace_id: get_s(&meta, "trace_id").map(str::to_owned),
            });
        }
        let object = crate::archive::write_now(&self.aws, &records)
            .await
            .map_err(failed)?;
        for d in &letters {
            for sk in [STATE, META] {
                let mut delete = self
                    .aws
                    .dynamodb
                    .delete_item()
                    .table_name(&self.aws.stack.events_table)
                    .set_key(Some(key(&d.event_id, sk)));
                if sk == STATE {
                    delete = delete
                        .condition_expression("#status = :dead")
                        .expression_attribute_names("#status", "status")
                        .expression_attribute_values(":dead", AttributeValue::S("dead".into()));
                }
                if let Err(e) = delete.send().await {
                    if e.as_service_error()
                        .is_some_and(|e| e.is_conditional_check_failed_exception())
                    {
                        // Redriven meanwhile: keep it.
                        report.purged.retain(|id| *id != d.event_id);
                        break;
                    }
                    return Err(failed(AwsError::from_sdk("the events table", e)));
                }
            }
        }
        let gone: HashSet<String> = report.purged.iter().cloned().collect();
        self.clean_dlq(&gone).await.map_err(failed)?;
        report.archive = Some(format!("s3://{}/{object}", self.aws.stack.archive_bucket));
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_segment_document_becomes_a_trace_segment_in_ms() {
        let doc = serde_json::json!({
            "name": "relay-dispatcher", "id": "53995c3f42cd8ad8", "parent_id": "a1b2c3d4e5f60718",
            "trace_id": "1-5759e988-bd862e3fe1be46a994272793",
            "start_time": 1_700_000_000.25, "end_time": 1_700_000_000.5,
            "fault": true, "annotations": {"event_id": "e-1"}
        });
        let s = segment(&doc).unwrap();
        assert_eq!((s.start, s.end), (1_700_000_000_250, 1_700_000_000_500));
        assert_eq!(s.parent_id.as_deref(), Some("a1b2c3d4e5f60718"));
        assert_eq!(s.detail["fault"], true);
        assert_eq!(s.detail["annotations"]["event_id"], "e-1");
        assert!(segment(&serde_json::json!({"id": "x"})).is_none());
    }
}
