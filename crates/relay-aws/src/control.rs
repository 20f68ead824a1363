//! The control table's `FLEET#target` item, through which the dispatchers of one stack (Lambda
//! instances, or `relay up --backend aws` processes) share the target's limit. This module is
//! the item's format and the calls that write and read it; the host that drives a dispatcher
//! by it is `relay_lambda::fleet`.
//!
//! - **Who is sending.** Each dispatcher writes its heartbeat, `member:<id> = <now ms>`, once
//!   per [`PERIOD`], and reads the whole item back in the same call (`ALL_NEW`,
//!   [`heartbeat`]). The members seen within [`LIVE`] are the fleet.
//! - **Cuts.** A dispatcher that cut its rate publishes the cut (`cut_ms`, `estimate`,
//!   `paused_until_ms`, `cut_by`) with a condition that no other cut was published within the
//!   last second: the first of an episode wins ([`publish_cut`]).
//! - **What they did.** The heartbeat carries each dispatcher's report, `report:<id>`, and
//!   `ADD`s its counts since the last heartbeat to the fleet's all-time totals; `relay status
//!   --backend aws` reads them ([`read_status`]).
//!
//! - **Holds.** `relay pause` sets `pause_since`, `pause_by` and `pause_reason`, and `relay
//!   resume` removes them ([`pause`], [`resume`]); each heartbeat reads them back, so the fleet
//!   stops and starts within a [`PERIOD`]. A dispatcher whose circuit opens sets
//!   `circuit_opened_ms`, and one whose probe is answered `circuit_answered_ms`: the others
//!   follow, so one dispatcher finds a target down for all. A dispatcher without a concurrency
//!   limit (or with a higher one) takes the lowest a live member reports.
//!
//! So the item is written N times a second plus once per cut, whatever the event rate: no hot
//! item is written per event.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue, ReturnValuesOnConditionCheckFailure};
use relay_core::hold::{CircuitView, Pause, Transition};
use relay_core::now_millis;
use relay_core::ops::Lesson;

use crate::items::{Item, get_n, get_s, n, s};
use crate::{Aws, AwsError};

/// The control table's item the fleet shares.
pub const FLEET_ITEM: &str = "FLEET#target";
/// How often each dispatcher writes its heartbeat and reads the fleet's state.
pub const PERIOD: Duration = Duration::from_secs(1);
/// A member whose heartbeat is older than this is not sending any more.
pub const LIVE: Duration = Duration::from_secs(3);
/// Heartbeats this old are removed from the item.
const FORGET: Duration = Duration::from_secs(60);
const MEMBER: &str = "member:";
const REPORT: &str = "report:";
/// The window of the reports' counts.
pub const MINUTE_MS: i64 = 60_000;

/// A dispatcher's counters, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub delivered: u64,
    pub retried: u64,
    pub dead: u64,
}

impl Counts {
    pub fn since(self, earlier: Counts) -> Counts {
        Counts {
            delivered: self.delivered.saturating_sub(earlier.delivered),
            retried: self.retried.saturating_sub(earlier.retried),
            dead: self.dead.saturating_sub(earlier.dead),
        }
    }
}

/// One dispatcher's report in the item, `report:<id>`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    pub at_ms: i64,
    /// Over the last minute.
    pub last_minute: Counts,
    pub in_flight: u64,
    pub rate: f64,
    pub fleet_rate: f64,
    pub estimate: Option<f64>,
    /// The oldest event it saw waiting for a retry (received at, ms).
    pub oldest_ms: Option<i64>,
    /// Most events in one request, and its `--max-age` (ms): for the drain forecast.
    pub events_per_request: u32,
    pub max_age_ms: i64,
    /// The concurrency limit it learned, if any.
    pub concurrency_limit: Option<u32>,
    /// Its circuit, when not closed.
    pub circuit: Option<CircuitView>,
    /// Events the target refused it with a rate limit since it started.
    pub rate_limited: u64,
    /// Its last few lessons of the target's limits, newest first (a few: the item is shared
    /// and small).
    pub lessons: Vec<Lesson>,
}

/// Lessons one report carries.
pub const LESSONS_PER_REPORT: usize = 5;

impl Report {
    fn item(&self) -> AttributeValue {
        let mut report = HashMap::from([
            ("at".to_owned(), n(self.at_ms)),
            ("delivered".to_owned(), n(self.last_minute.delivered)),
            ("retried".to_owned(), n(self.last_minute.retried)),
            ("dead".to_owned(), n(self.last_minute.dead)),
            ("in_flight".to_owned(), n(self.in_flight)),
            ("rate".to_owned(), n(self.rate)),
            ("fleet_rate".to_owned(), n(self.fleet_rate)),
            ("events_per_request".to_owned(), n(self.events_per_request)),
            ("max_age_ms".to_owned(), n(self.max_age_ms)),
        ]);
        if let Some(estimate) = self.estimate {
            report.insert("estimate".into(), n(estimate));
        }
        if let Some(oldest) = self.oldest_ms {
            report.insert("oldest_ms".into(), n(oldest));
        }
        if let Some(limit) = self.concurrency_limit {
            report.insert("concurrency_limit".into(), n(limit));
        }
        if let Some(circuit) = self.circuit.and_then(|c| serde_json::to_string(&c).ok()) {
            report.insert("circuit".into(), s(circuit));
        }
        report.insert("rate_limited".into(), n(self.rate_limited));
        let lessons = &self.lessons[..self.lessons.len().min(LESSONS_PER_REPORT)];
        if let Ok(lessons) = serde_json::to_string(lessons)
            && !self.lessons.is_empty()
        {
            report.insert("lessons".into(), s(lessons));
        }
        AttributeValue::M(report)
    }
}

/// One heartbeat: what a member writes once a [`PERIOD`].
#[derive(Debug, Clone, Default)]
pub struct Heartbeat {
    pub member: String,
    pub report: Report,
    /// Its counts since its last heartbeat, for the fleet's totals.
    pub add: Counts,
    /// Long-gone members to remove (from the previous [`FleetItem::stale`]).
    pub forget: Vec<String>,
    /// Changes of its circuit since its last heartbeat, for the others to follow.
    pub circuit: Vec<(Transition, i64)>,
}

/// A cut of the fleet's rate, as published.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedCut {
    pub at_ms: i64,
    pub by: String,
    pub estimate: f64,
    pub paused_until_ms: Option<i64>,
}

/// The item as a heartbeat reads it back.
#[derive(Debug, Clone, PartialEq)]
pub struct FleetItem {
    /// Live members (at least the one that just wrote).
    pub members: usize,
    /// Members gone for long, to forget at the next heartbeat.
    pub stale: Vec<String>,
    /// The last cut published, if any.
    pub cut: Option<SharedCut>,
    /// An operator's pause, if one stands.
    pub pause: Option<Pause>,
    /// When a dispatcher's circuit last opened, and when one's probe was last answered.
    pub circuit_opened_ms: Option<i64>,
    pub circuit_answered_ms: Option<i64>,
    /// The concurrency limits live members learned (`report:<id>.concurrency_limit`).
    pub concurrency_limits: Vec<u32>,
}

/// Writes `beat` and reads the whole item back, in one call.
pub async fn heartbeat(aws: &Aws, beat: &Heartbeat) -> Result<FleetItem, AwsError> {
    let mut update = aws
        .dynamodb
        .update_item()
        .table_name(&aws.stack.control_table)
        .key("pk", s(FLEET_ITEM))
        .expression_attribute_names("#me", format!("{MEMBER}{}", beat.member))
        .expression_attribute_names("#report", format!("{REPORT}{}", beat.member))
        .expression_attribute_values(":now", n(beat.report.at_ms))
        .expression_attribute_values(":report", beat.report.item())
        .expression_attribute_values(":delivered", n(beat.add.delivered))
        .expression_attribute_values(":retried", n(beat.add.retried))
        .expression_attribute_values(":dead", n(beat.add.dead))
        .return_values(ReturnValue::AllNew);
    let mut sets = vec!["#me = :now".to_owned(), "#report = :report".to_owned()];
    let opened = beat
        .circuit
        .iter()
        .rev()
        .find(|(t, _)| matches!(t, Transition::Opened | Transition::Reopened));
    if let Some((_, at)) = opened {
        sets.push("circuit_opened_ms = :opened".into());
        update = update.expression_attribute_values(":opened", n(*at));
    }
    let answered = beat
        .circuit
        .iter()
        .rev()
        .find(|(t, _)| *t == Transition::HalfOpened);
    if let Some((_, at)) = answered {
        sets.push("circuit_answered_ms = :answered".into());
        update = update.expression_attribute_values(":answered", n(*at));
    }
    let mut expression = format!("SET {}", sets.join(", "));
    for (i, member) in beat.forget.iter().enumerate() {
        expression.push_str(if i == 0 { " REMOVE " } else { ", " });
        expression.push_str(&format!("#old{i}, #oldr{i}"));
        update = update
            .expression_attribute_names(format!("#old{i}"), member)
            .expression_attribute_names(format!("#oldr{i}"), member.replacen(MEMBER, REPORT, 1));
    }
    expression
        .push_str(" ADD delivered_total :delivered, retried_total :retried, dead_total :dead");
    let item = update
        .update_expression(expression)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("the fleet's item in the control table", e))?
        .attributes
        .unwrap_or_default();
    let (members, stale) = members(&item, beat.report.at_ms);
    Ok(FleetItem {
        members,
        stale,
        cut: shared_cut(&item),
        pause: pause_of(&item),
        circuit_opened_ms: get_n(&item, "circuit_opened_ms"),
        circuit_answered_ms: get_n(&item, "circuit_answered_ms"),
        concurrency_limits: live_reports(&item, beat.report.at_ms)
            .filter_map(|report| get_n(report, "concurrency_limit"))
            .collect(),
    })
}

/// The reports of members seen within [`LIVE`].
fn live_reports(item: &Item, now_ms: i64) -> impl Iterator<Item = &Item> {
    item.iter()
        .filter(|(name, _)| name.starts_with(REPORT))
        .filter_map(|(_, value)| value.as_m().ok())
        .filter(move |report| {
            now_ms - get_n::<i64>(report, "at").unwrap_or(0) <= LIVE.as_millis() as i64
        })
}

fn pause_of(item: &Item) -> Option<Pause> {
    Some(Pause {
        since: get_n(item, "pause_since")?,
        by: get_s(item, "pause_by").unwrap_or_default().to_owned(),
        reason: get_s(item, "pause_reason").map(str::to_owned),
    })
}

/// Pauses the fleet's delivery, unless a pause stands: then that one, unchanged.
pub async fn pause(aws: &Aws, pause: &Pause) -> Result<Option<Pause>, AwsError> {
    let mut update = aws
        .dynamodb
        .update_item()
        .table_name(&aws.stack.control_table)
        .key("pk", s(FLEET_ITEM))
        .condition_expression("attribute_not_exists(pause_since)")
        .expression_attribute_values(":since", n(pause.since))
        .expression_attribute_values(":by", s(&pause.by))
        .return_values_on_condition_check_failure(ReturnValuesOnConditionCheckFailure::AllOld);
    update = match &pause.reason {
        Some(reason) => update
            .update_expression("SET pause_since = :since, pause_by = :by, pause_reason = :reason")
            .expression_attribute_values(":reason", s(reason)),
        None => {
            update.update_expression("SET pause_since = :since, pause_by = :by REMOVE pause_reason")
        }
    };
    match update.send().await {
        Ok(_) => Ok(None),
        Err(e) => match e.as_service_error() {
            Some(aws_sdk_dynamodb::operation::update_item::UpdateItemError::ConditionalCheckFailedException(c)) => {
                Ok(c.item().and_then(pause_of))
            }
            _ => Err(AwsError::from_sdk("the fleet's item in the control table", e)),
        },
    }
}

/// Lifts the pause; the one lifted, if one stood.
pub async fn resume(aws: &Aws) -> Result<Option<Pause>, AwsError> {
    let old = aws
        .dynamodb
        .update_item()
        .table_name(&aws.stack.control_table)
        .key("pk", s(FLEET_ITEM))
        .update_expression("REMOVE pause_since, pause_by, pause_reason")
        .return_values(ReturnValue::AllOld)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("the fleet's item in the control table", e))?
        .attributes
        .unwrap_or_default();
    Ok(pause_of(&old))
}

/// Publishes `cut` unless another of the same episode (within a second) is there already;
/// whether it was.
pub async fn publish_cut(aws: &Aws, cut: &SharedCut) -> Result<bool, AwsError> {
    let published = aws
        .dynamodb
        .update_item()
        .table_name(&aws.stack.control_table)
        .key("pk", s(FLEET_ITEM))
        .update_expression(
            "SET cut_ms = :cut, estimate = :estimate, paused_until_ms = :paused, cut_by = :me",
        )
        .condition_expression("attribute_not_exists(cut_ms) OR cut_ms < :episode")
        .expression_attribute_values(":cut", n(cut.at_ms))
        .expression_attribute_values(":episode", n(cut.at_ms - 1000))
        .expression_attribute_values(":estimate", n(cut.estimate))
        .expression_attribute_values(":paused", n(cut.paused_until_ms.unwrap_or(0)))
        .expression_attribute_values(":me", s(&cut.by))
        .send()
        .await;
    match published {
        Ok(_) => Ok(true),
        // Another dispatcher cut for the same episode.
        Err(e)
            if e.as_service_error()
                .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
        {
            Ok(false)
        }
        Err(e) => Err(AwsError::from_sdk(
            "the fleet's item in the control table",
            e,
        )),
    }
}

/// Removes `member`'s heartbeat and report, so the others take its share at once.
pub async fn leave(aws: &Aws, member: &str) -> Result<(), AwsError> {
    aws.dynamodb
        .update_item()
        .table_name(&aws.stack.control_table)
        .key("pk", s(FLEET_ITEM))
        .update_expression("REMOVE #me, #report")
        .expression_attribute_names("#me", format!("{MEMBER}{member}"))
        .expression_attribute_names("#report", format!("{REPORT}{member}"))
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("the fleet's item in the control table", e))?;
    Ok(())
}

/// What the fleet's dispatchers last reported, together.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FleetStatus {
    /// Dispatchers that wrote a heartbeat within [`LIVE`].
    pub members: usize,
    /// Over the reports of the last minute.
    pub delivered_last_minute: u64,
    pub retried_last_minute: u64,
    pub dead_last_minute: u64,
    /// Of the live dispatchers.
    pub in_flight: u64,
    /// The fleet's rate and estimated limit, as the latest report says.
    pub rate: Option<f64>,
    pub estimate: Option<f64>,
    /// The oldest event a dispatcher saw waiting for a retry (received at, ms).
    pub oldest_waiting: Option<i64>,
    /// Since the stack was created.
    pub delivered_total: u64,
    pub retried_total: u64,
    pub dead_total: u64,
    /// When the latest report was written.
    pub reported_at: Option<i64>,
    /// As the latest report says (absent from reports of older dispatchers).
    pub events_per_request: Option<u32>,
    pub max_age_ms: Option<i64>,
    pub concurrency_limit: Option<u32>,
    pub circuit: Option<CircuitView>,
    /// An operator's pause, if one stands.
    pub pause: Option<Pause>,
    /// Events the target refused with a rate limit, summed over the live dispatchers since
    /// each started (`None` when none reports it).
    pub rate_limited: Option<u64>,
    /// The live dispatchers' lessons of the target's limits, newest first.
    pub lessons: Vec<Lesson>,
}

/// Reads the fleet's item: its members' reports and totals.
pub async fn read_status(aws: &Aws) -> Result<FleetStatus, AwsError> {
    let item = aws
        .dynamodb
        .get_item()
        .table_name(&aws.stack.control_table)
        .key("pk", s(FLEET_ITEM))
        .consistent_read(true)
        .send()
        .await
        .map_err(|e| AwsError::from_sdk("the fleet's item in the control table", e))?
        .item
        .unwrap_or_default();
    Ok(fleet_status(&item, now_millis()))
}

fn fleet_status(item: &Item, now_ms: i64) -> FleetStatus {
    let mut status = FleetStatus {
        delivered_total: get_n(item, "delivered_total").unwrap_or(0),
        retried_total: get_n(item, "retried_total").unwrap_or(0),
        dead_total: get_n(item, "dead_total").unwrap_or(0),
        pause: pause_of(item),
        ..FleetStatus::default()
    };
    let mut latest = 0;
    for (name, value) in item {
        let Some(report) = name.strip_prefix(REPORT).and_then(|_| value.as_m().ok()) else {
            continue;
        };
        let at: i64 = get_n(report, "at").unwrap_or(0);
        let age = now_ms - at;
        if age > MINUTE_MS {
            continue;
        }
        status.delivered_last_minute += get_n::<u64>(report, "delivered").unwrap_or(0);
        status.retried_last_minute += get_n::<u64>(report, "retried").unwrap_or(0);
        status.dead_last_minute += get_n::<u64>(report, "dead").unwrap_or(0);
        if let Some(oldest) = get_n::<i64>(report, "oldest_ms") {
            status.oldest_waiting = Some(status.oldest_waiting.map_or(oldest, |o| o.min(oldest)));
        }
        if age <= LIVE.as_millis() as i64 {
            status.members += 1;
            status.in_flight += get_n::<u64>(report, "in_flight").unwrap_or(0);
            if let Some(refused) = get_n::<u64>(report, "rate_limited") {
                status.rate_limited = Some(status.rate_limited.unwrap_or(0) + refused);
            }
            if let Some(lessons) =
                get_s(report, "lessons").and_then(|l| serde_json::from_str::<Vec<Lesson>>(l).ok())
            {
                status.lessons.extend(lessons);
            }
        }
        if at > latest {
            latest = at;
            status.rate = get_n(report, "fleet_rate");
            status.estimate = get_n(report, "estimate");
            status.reported_at = Some(at);
            status.events_per_request = get_n(report, "events_per_request");
            status.max_age_ms = get_n(report, "max_age_ms");
            status.concurrency_limit = get_n(report, "concurrency_limit");
            status.circuit = get_s(report, "circuit").and_then(|c| serde_json::from_str(c).ok());
        }
    }
    status.lessons.sort_by_key(|l| std::cmp::Reverse(l.at));
    status.lessons.truncate(20);
    status
}

/// Live members (at least this one, which just wrote), and the names of long-gone ones.
fn members(item: &Item, now_ms: i64) -> (usize, Vec<String>) {
    let mut live = 0;
    let mut stale = Vec::new();
    for (name, value) in item {
        if !name.starts_with(MEMBER) {
            continue;
        }
        let seen: i64 = value.as_n().ok().and_then(|v| v.parse().ok()).unwrap_or(0);
        let age = now_ms - seen;
        if age <= LIVE.as_millis() as i64 {
            live += 1;
        } else if age > FORGET.as_millis() as i64 {
            stale.push(name.clone());
        }
    }
    (live.max(1), stale)
}

fn shared_cut(item: &Item) -> Option<SharedCut> {
    Some(SharedCut {
        at_ms: get_n::<i64>(item, "cut_ms")?,
        by: get_s(item, "cut_by").unwrap_or_default().to_owned(),
        estimate: get_n::<f64>(item, "estimate")?,
        paused_until_ms: get_n::<i64>(item, "paused_until_ms").filter(|&p| p > 0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lesson(at: i64, detail: &str) -> Lesson {
        Lesson {
            at,
            kind: "rate_limited".into(),
            detail: detail.into(),
            learned_rate: Some(10.0),
        }
    }

    /// What each dispatcher writes of its refusals and lessons, the status reads back: summed
    /// and merged newest first over the live ones, a gone dispatcher's left out.
    #[test]
    fn the_fleet_status_carries_the_live_dispatchers_refusals_and_lessons() {
        let now = 1_000_000;
        let report = |at_ms, rate_limited, lessons: Vec<Lesson>| {
            Report {
                at_ms,
                rate_limited,
                lessons,
                ..Report::default()
            }
            .item()
        };
        let many: Vec<Lesson> = (0..9).map(|i| lesson(now - 100 * i, "a")).collect();
        let item: Item = HashMap::from([
            (format!("{REPORT}a"), report(now, 7, many)),
            (
                format!("{REPORT}b"),
                report(now - 500, 3, vec![lesson(now - 50, "b")]),
            ),
            (
                format!("{REPORT}gone"),
                report(
                    now - LIVE.as_millis() as i64 - 1,
                    100,
                    vec![lesson(now, "gone")],
                ),
            ),
        ]);
        let status = fleet_status(&item, now);
        assert_eq!(
            status.rate_limited,
            Some(10),
            "the live ones' refusals, summed"
        );
        let details: Vec<&str> = status.lessons.iter().map(|l| l.detail.as_str()).collect();
        assert_eq!(
            details,
            ["a", "b", "a", "a", "a", "a"],
            "{LESSONS_PER_REPORT} of a's, b's, newest first, none of the gone one's"
        );
        assert!(status.lessons.windows(2).all(|w| w[0].at >= w[1].at));
    }
}
