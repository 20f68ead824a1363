//! The operator's port: everything `relay trace`, `relay dlq` and `relay status` need, so the
//! commands work unchanged over any backend (the embedded store now, AWS later).

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::UnixMillis;
use crate::delivery::DeliveryStatus;
use crate::ports::StoreError;

/// One event's whole story, from every place it can be.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventTrace {
    pub event_id: String,
    /// The event as received.
    pub payload: serde_json::Value,
    pub received_at: UnixMillis,
    pub delivery: DeliveryState,
    pub attempts: Vec<AttemptView>,
    pub dead_letter: Option<DeadLetterView>,
    /// Ids of this event in tracing systems (X-Ray trace/segment ids on AWS); none locally.
    pub trace_ids: Vec<TraceRef>,
    /// The trace's segments, oldest first (X-Ray on AWS: receive, forward, each attempt).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub segments: Vec<TraceSegment>,
    /// Set when the event was answered 2xx before its flush to disk completed (the local
    /// store's `deadline` durability policy, while the disk stalled).
    pub acked_before_flush: Option<EarlyAck>,
    /// Set when the event has left the live store for the archive.
    pub archived: Option<ArchiveRef>,
    /// The pause that holds the event back, when it waits while delivery is paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub paused: Option<crate::hold::Pause>,
}

/// An acknowledgement sent before the event's flush to disk completed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct EarlyAck {
    pub acked_at: UnixMillis,
    /// When the flush landed; `None` if the process stopped first (the event was written, so
    /// it survived that, and the next start made it durable).
    pub flushed_at: Option<UnixMillis>,
}

/// Where an archived event is kept.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArchiveRef {
    /// A file path (local) or an object URL (S3).
    pub location: String,
    /// `retention` (delivered long enough ago) or `purged` (a dead letter purged by an operator).
    pub why: String,
    pub archived_at: UnixMillis,
}

/// Where the delivery stands now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeliveryState {
    #[serde(serialize_with = "as_str")]
    pub status: DeliveryStatus,
    /// Attempts counted toward the limit.
    pub attempts: u32,
    /// Every attempt made.
    pub tries: u32,
    /// When the next attempt is due (queued), or when the lease ends (in flight).
    pub due_at: Option<UnixMillis>,
    pub delivered_at: Option<UnixMillis>,
    pub last_error: Option<String>,
    /// What starts the next attempt: `scheduled`, or `redrive` after an operator's redrive.
    pub next_trigger: String,
}

fn as_str<S: serde::Serializer>(status: &DeliveryStatus, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(status.as_str())
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptView {
    pub n: u32,
    pub trigger: String,
    pub started_at: UnixMillis,
    pub duration_ms: u64,
    pub outcome: crate::delivery::AttemptOutcome,
    pub http_status: Option<u16>,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterView {
    pub event_id: String,
    pub reason: String,
    pub attempts: u32,
    pub last_response: Option<String>,
    pub dead_at: UnixMillis,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceRef {
    /// e.g. `xray`.
    pub system: String,
    pub id: String,
}

/// One unit of work in an event's trace (an X-Ray segment).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TraceSegment {
    pub name: String,
    pub id: String,
    pub parent_id: Option<String>,
    pub start: UnixMillis,
    pub end: UnixMillis,
    /// What the segment says about itself: its annotations, HTTP status, error flags.
    pub detail: serde_json::Value,
}

/// Which dead letters to list, redrive or purge.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DlqFilter {
    /// Dead-lettered at or after this time.
    pub since: Option<UnixMillis>,
    /// Dead-lettered before this time.
    pub before: Option<UnixMillis>,
    /// Reason contains this text (case-insensitive).
    pub reason: Option<String>,
    /// Only these events (the console's selection).
    pub ids: Option<Vec<String>>,
    pub limit: Option<usize>,
}

/// What a running dispatcher last reported about itself.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize)]
pub struct DispatcherReport {
    /// Current sending rate, requests/s.
    pub rate: f64,
    /// The target limit estimated from its rate-limit signals.
    pub estimated_limit: Option<f64>,
    /// What the target announced about its budget (rate-limit headers or GraphQL cost), if it
    /// does.
    #[serde(default)]
    pub announced: Option<crate::budget::Budget>,
    pub in_flight: u64,
    pub reported_at: UnixMillis,
    /// Most events in one request (`relay up --batch`), when more than one and known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events_per_request: Option<u32>,
    /// The oldest an event may get before it is dead-lettered (`--max-age`), ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_ms: Option<i64>,
    /// The most requests in flight the target allows, when its refusals showed a concurrency
    /// limit (`relay_core::concurrency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency_limit: Option<u32>,
    /// The target's circuit, when it is not closed (`relay_core::hold`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub circuit: Option<crate::hold::CircuitView>,
    /// Events the target refused with a rate limit since the dispatcher started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limited: Option<u64>,
    /// What taught the dispatcher its limits, newest first: the last refusals and budget
    /// readings.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lessons: Vec<Lesson>,
}

/// One thing the target said that moved (or confirmed) what relay knows of its limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lesson {
    pub at: UnixMillis,
    /// `rate_limited` (a 429 or GraphQL RATE_LIMITED), `concurrency` (a refusal that showed a
    /// concurrency limit), or `budget` (rate-limit headers or GraphQL cost).
    pub kind: String,
    /// What the answer said: its status, `Retry-After`, the budget it announced.
    pub detail: String,
    /// The learned limit right after, requests/s.
    pub learned_rate: Option<f64>,
}

/// Which events to list, newest first (the console's Events page, `GET /api/v1/events`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    pub status: Option<DeliveryStatus>,
    /// Received at or after.
    pub since: Option<UnixMillis>,
    /// Received before.
    pub until: Option<UnixMillis>,
    pub id_prefix: Option<String>,
    /// A field of the payload that must have a value.
    pub field: Option<FieldMatch>,
    /// Where the previous page stopped ([`EventPage::next`]).
    pub cursor: Option<String>,
    pub limit: usize,
}

/// `path=value`: the payload's field at a dotted path (`source.shard`, `tags.0` for an array's
/// first item) has this value; a string compares as it is, anything else as its JSON text
/// (`3`, `true`, `null`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldMatch {
    pub path: Vec<String>,
    pub value: String,
}

impl FieldMatch {
    /// Parses `path=value`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let (path, value) = s
            .split_once('=')
            .ok_or_else(|| format!("{s:?}: expected path=value, e.g. name=order.created"))?;
        let path: Vec<String> = path.trim().split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!("{s:?}: the path has an empty part"));
        }
        Ok(FieldMatch {
            path,
            value: value.to_owned(),
        })
    }

    pub fn matches(&self, payload: &serde_json::Value) -> bool {
        let found = self.path.iter().try_fold(payload, |v, key| match v {
            serde_json::Value::Array(items) => items.get(key.parse::<usize>().ok()?),
            _ => v.get(key),
        });
        match found {
            Some(serde_json::Value::String(s)) => *s == self.value,
            // Its JSON text: `3`, `true`, `null`, `{"a":1}`.
            Some(other) => serde_json::to_string(other).is_ok_and(|text| text == self.value),
            None => false,
        }
    }
}

impl std::fmt::Display for FieldMatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.path.join("."), self.value)
    }
}

/// One event in a list.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventSummary {
    pub event_id: String,
    /// The payload's `name`.
    pub name: Option<String>,
    pub received_at: UnixMillis,
    #[serde(serialize_with = "as_str")]
    pub status: DeliveryStatus,
    /// Every attempt made.
    pub tries: u32,
    pub delivered_at: Option<UnixMillis>,
    pub last_error: Option<String>,
}

/// A page of events, and where the next one starts. A page may hold fewer than asked, even
/// none, with more to come: each page reads a bounded number of events, so a filter that
/// matches few never makes one request scan millions.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct EventPage {
    pub events: Vec<EventSummary>,
    /// Pass as [`EventQuery::cursor`] for the next page; `None` at the end.
    pub next: Option<String>,
    /// Events read to make this page (on AWS, items: an event is two).
    pub scanned: u64,
}

/// Dead letters that share a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetterGroup {
    pub reason: String,
    pub count: u64,
    pub first_at: UnixMillis,
    pub last_at: UnixMillis,
}

/// Groups dead letters by their exact reason, the largest group first.
pub fn group_dead_letters(letters: &[DeadLetterView]) -> Vec<DeadLetterGroup> {
    let mut groups: std::collections::BTreeMap<&str, DeadLetterGroup> = Default::default();
    for l in letters {
        let g = groups
            .entry(l.reason.as_str())
            .or_insert_with(|| DeadLetterGroup {
                reason: l.reason.clone(),
                count: 0,
                first_at: l.dead_at,
                last_at: l.dead_at,
            });
        g.count += 1;
        g.first_at = g.first_at.min(l.dead_at);
        g.last_at = g.last_at.max(l.dead_at);
    }
    let mut groups: Vec<DeadLetterGroup> = groups.into_values().collect();
    groups.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
    groups
}

/// A dispatcher that has not reported for this long is not running.
pub const DISPATCHER_STALE_MS: i64 = 10_000;

/// When the backlog will be delivered at the pace relay holds now: what an operator asks first
/// when a target slows down.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Forecast {
    /// Events waiting or in flight.
    pub backlog: u64,
    /// Age of the oldest event still waiting, ms.
    pub oldest_age_ms: Option<i64>,
    /// Events per second at the dispatcher's learned pace (its rate times the events in one
    /// request); `None` when no dispatcher is running.
    pub pace_per_s: Option<f64>,
    /// How long the backlog takes at that pace, ms, not counting what arrives meanwhile;
    /// `None` without a pace.
    pub drain_ms: Option<i64>,
    /// The dispatcher's `--max-age`, ms, when it reported it.
    pub max_age_ms: Option<i64>,
    /// Events will pass `--max-age` before they are delivered (a failed attempt then
    /// dead-letters them rather than retrying): the oldest waiting event's age plus the drain
    /// time is beyond it, or nothing is sending.
    pub passes_max_age: bool,
}

impl StatusReport {
    /// The running dispatcher's report, if it reported within [`DISPATCHER_STALE_MS`].
    pub fn live_dispatcher(&self) -> Option<&DispatcherReport> {
        self.dispatcher
            .as_ref()
            .filter(|d| self.now - d.reported_at <= DISPATCHER_STALE_MS)
    }

    /// The drain forecast from these figures.
    pub fn forecast(&self) -> Forecast {
        let backlog = self.queued + self.in_flight;
        let oldest_age_ms = self
            .oldest_waiting_received_at
            .map(|at| (self.now - at).max(0));
        let live = self.live_dispatcher();
        let pace_per_s = live.map(|d| d.rate * f64::from(d.events_per_request.unwrap_or(1)));
        let drain_ms = match pace_per_s {
            _ if backlog == 0 => Some(0),
            Some(pace) if pace > 0.0 => Some((backlog as f64 / pace * 1000.0).ceil() as i64),
            _ => None,
        };
        let max_age_ms = self.dispatcher.as_ref().and_then(|d| d.max_age_ms);
        let passes_max_age = match (max_age_ms, drain_ms) {
            _ if backlog == 0 => false,
            (Some(max_age), Some(drain)) => oldest_age_ms.unwrap_or(0) + drain > max_age,
            // Nothing sends: every waiting event ages past any limit.
            (Some(_), None) => true,
            (None, _) => false,
        };
        Forecast {
            backlog,
            oldest_age_ms,
            pace_per_s,
            drain_ms,
            max_age_ms,
            passes_max_age,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusReport {
    pub now: UnixMillis,
    /// Waiting for their next attempt.
    pub queued: u64,
    /// Claimed by a dispatcher (being sent).
    pub in_flight: u64,
    pub delivered: u64,
    /// In the dead-letter queue.
    pub dead: u64,
    /// When the oldest event still waiting for delivery was received.
    pub oldest_waiting_received_at: Option<UnixMillis>,
    pub delivered_last_minute: u64,
    /// Attempts that failed and were scheduled again, last minute.
    pub retried_last_minute: u64,
    pub dead_lettered_last_minute: u64,
    /// Events answered 2xx before their flush to disk completed, since the store was created
    /// (always 0 on AWS, where every answer follows the durable write).
    pub acked_before_flush: u64,
    /// `None` when no dispatcher has ever reported.
    pub dispatcher: Option<DispatcherReport>,
    /// What is failing in the store, if anything (it acknowledges no event meanwhile).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub store_failing: Vec<StoreFailing>,
    /// An operator's pause (`relay pause`), if one stands: nothing is sent meanwhile.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause: Option<crate::hold::Pause>,
}

/// A part of the store that cannot keep the promise that a 2xx means durable, and since when.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreFailing {
    /// `journal`, `index` or `index checkpoint`.
    pub part: String,
    pub since: UnixMillis,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RedriveReport {
    /// Back in the queue.
    pub redriven: Vec<String>,
    /// Asked for but not in the dead-letter queue (unknown, or not dead).
    pub skipped: Vec<String>,
    /// Asked for, but purged to the archive: not redriven (re-send the archived payload).
    pub archived: Vec<ArchivedId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArchivedId {
    pub id: String,
    pub location: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PurgeReport {
    /// Removed from the dead-letter queue (or, with a dry run, would be).
    pub purged: Vec<String>,
    /// Where their copies went.
    pub archive: Option<String>,
}

/// Inspecting and operating a relay's state.
pub trait Operations {
    fn trace(
        &self,
        id: &str,
    ) -> impl Future<Output = Result<Option<EventTrace>, StoreError>> + Send;
    fn status(&self) -> impl Future<Output = Result<StatusReport, StoreError>> + Send;
    /// Newest first.
    fn dead_letters(
        &self,
        filter: &DlqFilter,
    ) -> impl Future<Output = Result<Vec<DeadLetterView>, StoreError>> + Send;
    /// Puts dead letters back in the queue with a fresh attempt budget; their next attempt is
    /// triggered `redrive`. `spread` staggers their due times over that long, so a large redrive
    /// reaches the dispatcher gradually.
    fn redrive(
        &self,
        ids: &[String],
        spread: Duration,
    ) -> impl Future<Output = Result<RedriveReport, StoreError>> + Send;
    /// Removes the dead letters `filter` matches, each with a copy in the archive. With
    /// `dry_run`, only says which.
    fn purge(
        &self,
        filter: &DlqFilter,
        dry_run: bool,
    ) -> impl Future<Output = Result<PurgeReport, StoreError>> + Send;
    /// Pauses delivery: nothing is sent until [`Self::resume`]; events are still accepted.
    /// When a pause stands already, it is left as it is and returned.
    fn pause(
        &self,
        pause: crate::hold::Pause,
    ) -> impl Future<Output = Result<Option<crate::hold::Pause>, StoreError>> + Send;
    /// Lifts the pause; returns it, or `None` when delivery was not paused.
    fn resume(&self)
    -> impl Future<Output = Result<Option<crate::hold::Pause>, StoreError>> + Send;
    /// A page of events, newest first.
    fn events(
        &self,
        query: &EventQuery,
    ) -> impl Future<Output = Result<EventPage, StoreError>> + Send;
    /// The dead letters grouped by reason, the largest group first.
    fn dead_letter_groups(
        &self,
    ) -> impl Future<Output = Result<Vec<DeadLetterGroup>, StoreError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_field_match_reads_a_dotted_path_and_compares_json_text() {
        let payload = serde_json::json!({
            "name": "order.created",
            "source": {"shard": 3, "live": true, "tags": ["a", "b"]},
        });
        let m = |s: &str| FieldMatch::parse(s).unwrap().matches(&payload);
        assert!(
            m("name=order.created"),
            "the value may hold dots and the first = splits"
        );
        assert!(m("source.shard=3") && m("source.live=true") && m("source.tags.1=b"));
        assert!(!m("source.shard=\"3\"") && !m("source.tags.2=c") && !m("missing=x"));
        assert!(!m("name=order"), "whole values only");
        assert_eq!(
            FieldMatch::parse("a=b=c").unwrap().value,
            "b=c",
            "only the first = splits"
        );
        assert!(FieldMatch::parse("no-equals").is_err());
        assert!(FieldMatch::parse("a..b=1").is_err());
    }

    #[test]
    fn dead_letters_group_by_exact_reason_largest_first() {
        let letter = |id: &str, reason: &str, at| DeadLetterView {
            event_id: id.into(),
            reason: reason.into(),
            attempts: 1,
            last_response: None,
            dead_at: at,
        };
        let groups = group_dead_letters(&[
            letter("a", "HTTP 400: bad", 5),
            letter("b", "attempts exhausted", 9),
            letter("c", "HTTP 400: bad", 2),
        ]);
        assert_eq!(groups[0].reason, "HTTP 400: bad");
        assert_eq!(
            (groups[0].count, groups[0].first_at, groups[0].last_at),
            (2, 2, 5)
        );
        assert_eq!((groups[1].count, groups.len()), (1, 2));
    }

    const NOW: i64 = 1_000_000_000;

    fn status(
        queued: u64,
        oldest_age_ms: Option<i64>,
        dispatcher: Option<DispatcherReport>,
    ) -> StatusReport {
        StatusReport {
            now: NOW,
            queued,
            in_flight: 0,
            delivered: 0,
            dead: 0,
            oldest_waiting_received_at: oldest_age_ms.map(|age| NOW - age),
            delivered_last_minute: 0,
            retried_last_minute: 0,
            dead_lettered_last_minute: 0,
            acked_before_flush: 0,
            dispatcher,
            store_failing: Vec::new(),
            pause: None,
        }
    }

    fn dispatcher(
        rate: f64,
        batch: Option<u32>,
        max_age_ms: i64,
        age_ms: i64,
    ) -> Option<DispatcherReport> {
        Some(DispatcherReport {
            rate,
            estimated_limit: None,
            announced: None,
            in_flight: 0,
            reported_at: NOW - age_ms,
            events_per_request: batch,
            max_age_ms: Some(max_age_ms),
            concurrency_limit: None,
            circuit: None,
            rate_limited: None,
            lessons: Vec::new(),
        })
    }

    const HOUR: i64 = 3_600_000;

    #[test]
    fn the_backlog_drains_at_the_learned_pace_times_the_events_per_request() {
        let f = status(1_000, Some(60_000), dispatcher(20.0, None, HOUR, 1_000)).forecast();
        assert_eq!(
            (f.backlog, f.pace_per_s, f.drain_ms),
            (1_000, Some(20.0), Some(50_000))
        );
        assert!(!f.passes_max_age);
        let batched = status(1_000, None, dispatcher(20.0, Some(10), HOUR, 1_000)).forecast();
        assert_eq!(batched.drain_ms, Some(5_000));
    }

    #[test]
    fn events_that_will_age_past_max_age_are_announced() {
        // 36,000 events at 10/s: an hour to drain; the oldest is already 10 minutes old.
        let late = status(36_000, Some(600_000), dispatcher(10.0, None, HOUR, 1_000)).forecast();
        assert_eq!(late.drain_ms, Some(HOUR));
        assert!(late.passes_max_age);
        // Nothing sending (the dispatcher stopped reporting): no drain time, and they will.
        let stopped = status(10, Some(1_000), dispatcher(10.0, None, HOUR, 60_000)).forecast();
        assert_eq!((stopped.pace_per_s, stopped.drain_ms), (None, None));
        assert!(stopped.passes_max_age);
        // An empty backlog drains in no time and passes nothing.
        let empty = status(0, None, None).forecast();
        assert_eq!((empty.drain_ms, empty.passes_max_age), (Some(0), false));
    }
}
