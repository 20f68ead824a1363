//! The dispatchers of one stack (Lambda instances, or `relay up --backend aws` processes) share
//! the target's limit through one item of the control table, `FLEET#target`:
//!
//! - **Who is sending.** Each dispatcher writes its heartbeat, `member:<id> = <now ms>`, once
//!   per [`PERIOD`], and reads the whole item back in the same call (`ALL_NEW`). The members
//!   seen within [`LIVE`] are the fleet: each sends `1 / N` of the fleet's rate
//!   (`RateController::set_share`), so a configured ceiling holds for the fleet.
//! - **Cuts.** A dispatcher that cut its rate on a 429, `RATE_LIMITED` or `THROTTLED` answer
//!   publishes the cut (`cut_ms`, `estimate`, `paused_until_ms`, `cut_by`) with a condition that
//!   no other cut was published within the last second: the first of an episode wins, as one
//!   sender cuts once. The others follow it at their next heartbeat
//!   (`RateController::adopt_cut`), a `Retry-After` pause included.
//!
//! - **What they did.** The same write carries each dispatcher's report, `report:<id>`: its
//!   deliveries, retries and dead letters of the last minute, what it has in flight, its rate,
//!   the fleet's and the estimated limit, and the oldest event it saw waiting; and `ADD`s its
//!   counts since the last heartbeat to the fleet's all-time totals. `relay status --backend aws`
//!   reads them ([`read_status`]).
//!
//! So the item is written N times a second plus once per cut, whatever the event rate: no hot
//! item is written per event. A dispatcher that cannot reach the table keeps its last share and
//! its own control; the target's signals still slow it down.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, ReturnValue};
use relay_core::now_millis;
use relay_core::rate::Cut;
use relay_dispatch::DispatcherHandle;
use tokio::time::Instant;

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
/// A published cut older than this is not adopted by a dispatcher that starts.
const STALE_CUT: Duration = Duration::from_secs(600);
const MEMBER: &str = "member:";
const REPORT: &str = "report:";
/// The window of the reports' counts.
const MINUTE_MS: i64 = 60_000;

/// What one dispatcher last saw of its fleet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FleetView {
    /// Dispatchers sending, this one included.
    pub members: usize,
    /// The last cut published, if any: when (ms), and by whom.
    pub cut_ms: Option<i64>,
    /// This dispatcher's share of the fleet's rate.
    pub share: f64,
}

/// One dispatcher's membership of the fleet.
#[derive(Debug)]
pub struct Fleet {
    aws: Aws,
    id: String,
    handle: DispatcherHandle,
    state: Mutex<Seen>,
    /// Where this dispatcher takes its work, for the oldest event it saw waiting.
    queue: Option<crate::SqsQueue>,
}

/// A dispatcher's counters, cumulative.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Counts {
    delivered: u64,
    retried: u64,
    dead: u64,
}

impl Counts {
    fn since(self, earlier: Counts) -> Counts {
        Counts {
            delivered: self.delivered.saturating_sub(earlier.delivered),
            retried: self.retried.saturating_sub(earlier.retried),
            dead: self.dead.saturating_sub(earlier.dead),
        }
    }
}

#[derive(Debug, Default)]
struct Seen {
    /// The last cut of this dispatcher's controller that the fleet knows of (published by
    /// it, adopted from another, or refused as part of another's episode).
    known_cut: Option<Instant>,
    /// The newest published cut this dispatcher has looked at.
    shared_cut_ms: Option<i64>,
    /// Members seen long ago, removed at the next heartbeat.
    forget: Vec<String>,
    /// Counts at each heartbeat of the last minute, oldest first.
    window: VecDeque<(i64, Counts)>,
    /// Counts already added to the fleet's totals.
    added: Counts,
}

impl Fleet {
    pub fn new(aws: Aws, handle: DispatcherHandle) -> Self {
        let id = format!("{:016x}", fastrand::u64(..));
        Fleet {
            aws,
            id,
            handle,
            state: Mutex::default(),
            queue: None,
        }
    }

    /// Reports the oldest event `queue` saw waiting for a retry.
    pub fn with_queue(mut self, queue: crate::SqsQueue) -> Self {
        self.queue = Some(queue);
        self
    }

    /// This heartbeat's report, and the counts to add to the fleet's totals.
    fn report(&self, now_ms: i64) -> (AttributeValue, Counts) {
        let m = self.handle.snapshot();
        let counts = Counts {
            delivered: m.delivered,
            retried: m.transient + m.rate_limited,
            dead: m.dead,
        };
        let mut seen = self.seen();
        seen.window.push_back((now_ms, counts));
        while seen
            .window
            .front()
            .is_some_and(|(at, _)| now_ms - at > MINUTE_MS)
        {
            seen.window.pop_front();
        }
        let first = seen.window.front().map_or(counts, |(_, c)| *c);
        let minute = counts.since(first);
        let add = counts.since(seen.added);
        seen.added = counts;
        drop(seen);
        let (rate, fleet_rate, estimate) = self.rate_report();
        let mut report = HashMap::from([
            ("at".to_owned(), n(now_ms)),
            ("delivered".to_owned(), n(minute.delivered)),
            ("retried".to_owned(), n(minute.retried)),
            ("dead".to_owned(), n(minute.dead)),
            ("in_flight".to_owned(), n(m.in_flight)),
            ("rate".to_owned(), n(rate)),
            ("fleet_rate".to_owned(), n(fleet_rate)),
        ]);
        if let Some(estimate) = estimate {
            report.insert("estimate".into(), n(estimate));
        }
        if let Some(oldest) = self
            .queue
            .as_ref()
            .and_then(crate::SqsQueue::oldest_waiting)
        {
            report.insert("oldest_ms".into(), n(oldest));
        }
        (AttributeValue::M(report), add)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// This dispatcher's sending rate, the fleet's, and the fleet's estimated limit.
    pub fn rate_report(&self) -> (f64, f64, Option<f64>) {
        self.handle
            .with_rate(|rc| (rc.rate(), rc.fleet_rate(), rc.estimate()))
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes the heartbeat, reads the fleet, and shares or follows cuts. One write, plus one
    /// when this dispatcher cut since the last call.
    pub async fn sync(&self) -> Result<FleetView, AwsError> {
        let now_ms = now_millis();
        let forget = std::mem::take(&mut self.seen().forget);
        let (report, add) = self.report(now_ms);
        let mut update = self
            .aws
            .dynamodb
            .update_item()
            .table_name(&self.aws.stack.control_table)
            .key("pk", s(FLEET_ITEM))
            .expression_attribute_names("#me", format!("{MEMBER}{}", self.id))
            .expression_attribute_names("#report", format!("{REPORT}{}", self.id))
            .expression_attribute_values(":now", n(now_ms))
            .expression_attribute_values(":report", report)
            .expression_attribute_values(":delivered", n(add.delivered))
            .expression_attribute_values(":retried", n(add.retried))
            .expression_attribute_values(":dead", n(add.dead))
            .return_values(ReturnValue::AllNew);
        let mut expression = "SET #me = :now, #report = :report".to_owned();
        for (i, member) in forget.iter().enumerate() {
            expression.push_str(if i == 0 { " REMOVE " } else { ", " });
            expression.push_str(&format!("#old{i}, #oldr{i}"));
            update = update
                .expression_attribute_names(format!("#old{i}"), member)
                .expression_attribute_names(
                    format!("#oldr{i}"),
                    member.replacen(MEMBER, REPORT, 1),
                );
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

        let (members, stale) = members(&item, now_ms);
        self.seen().forget = stale;
        let share = 1.0 / members.max(1) as f64;
        let now = Instant::now();
        self.handle.with_rate(|rc| rc.set_share(now, share));

        let shared = shared_cut(&item);
        let mine = self.handle.with_rate(|rc| rc.last_cut());
        let new_mine = mine.filter(|c| self.seen().known_cut.is_none_or(|k| c.at > k));
        if let Some(cut) = new_mine {
            self.publish(cut, now, now_ms).await?;
            self.seen().known_cut = Some(cut.at);
        } else if let Some((cut_ms, by, cut)) = shared {
            let newer = self.seen().shared_cut_ms.is_none_or(|seen| cut_ms > seen);
            let fresh = now_ms - cut_ms < STALE_CUT.as_millis() as i64;
            if newer && fresh && by != self.id {
                let paused_until = cut
                    .paused_until_ms
                    .filter(|&until| until > now_ms)
                    .map(|until| now + Duration::from_millis((until - now_ms) as u64));
                let adopted = self.handle.with_rate(|rc| {
                    rc.adopt_cut(
                        now,
                        Cut {
                            at: now,
                            estimate: cut.estimate,
                            paused_until,
                        },
                    );
                    rc.last_cut()
                });
                tracing::info!(
                    by = %by,
                    estimate = cut.estimate,
                    members,
                    "following the fleet's cut"
                );
                self.seen().known_cut = adopted.map(|c| c.at);
            }
        }
        if let Some((cut_ms, ..)) = shared {
            self.seen().shared_cut_ms = Some(cut_ms);
        }
        Ok(FleetView {
            members,
            cut_ms: shared.map(|(ms, ..)| ms),
            share,
        })
    }

    /// Publishes this dispatcher's cut unless another of the same episode (within a second)
    /// is there already.
    async fn publish(&self, cut: Cut, now: Instant, now_ms: i64) -> Result<(), AwsError> {
        let cut_ms = now_ms - now.saturating_duration_since(cut.at).as_millis() as i64;
        let paused_until_ms = cut
            .paused_until
            .map(|until| now_ms + until.saturating_duration_since(now).as_millis() as i64)
            .unwrap_or(0);
        let published = self
            .aws
            .dynamodb
            .update_item()
            .table_name(&self.aws.stack.control_table)
            .key("pk", s(FLEET_ITEM))
            .update_expression(
                "SET cut_ms = :cut, estimate = :estimate, paused_until_ms = :paused, cut_by = :me",
            )
            .condition_expression("attribute_not_exists(cut_ms) OR cut_ms < :episode")
            .expression_attribute_values(":cut", n(cut_ms))
            .expression_attribute_values(":episode", n(cut_ms - 1000))
            .expression_attribute_values(":estimate", n(cut.estimate))
            .expression_attribute_values(":paused", n(paused_until_ms))
            .expression_attribute_values(":me", s(&self.id))
            .send()
            .await;
        match published {
            Ok(_) => {
                tracing::info!(estimate = cut.estimate, "cut the fleet's rate");
                Ok(())
            }
            // Another dispatcher cut for the same episode: ours stands locally, nothing more.
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_conditional_check_failed_exception()) =>
            {
                Ok(())
            }
            Err(e) => Err(AwsError::from_sdk(
                "the fleet's item in the control table",
                e,
            )),
        }
    }

    /// Syncs every [`PERIOD`] until `stop` resolves, then leaves the fleet.
    pub async fn run(self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        let mut tick = tokio::time::interval(PERIOD);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut failing = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = &mut stop => break,
            }
            match self.sync().await {
                Ok(view) => {
                    if std::mem::take(&mut failing) {
                        tracing::info!(members = view.members, "fleet sync works again");
                    }
                }
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!(error = %e, "fleet sync failed; pacing on this dispatcher's own share until it works");
                }
                Err(_) => {}
            }
        }
        self.leave().await;
    }

    /// Removes this dispatcher's heartbeat, so the others take its share at once.
    pub async fn leave(&self) {
        let left = self
            .aws
            .dynamodb
            .update_item()
            .table_name(&self.aws.stack.control_table)
            .key("pk", s(FLEET_ITEM))
            .update_expression("REMOVE #me, #report")
            .expression_attribute_names("#me", format!("{MEMBER}{}", self.id))
            .expression_attribute_names("#report", format!("{REPORT}{}", self.id))
            .send()
            .await;
        if let Err(e) = left {
            tracing::debug!(error = %e, "could not leave the fleet; the heartbeat ages out");
        }
    }
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
        }
        if at > latest {
            latest = at;
            status.rate = get_n(report, "fleet_rate");
            status.estimate = get_n(report, "estimate");
            status.reported_at = Some(at);
        }
    }
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

#[derive(Debug, Clone, Copy)]
struct SharedCut {
    estimate: f64,
    paused_until_ms: Option<i64>,
}

fn shared_cut(item: &HashMap<String, AttributeValue>) -> Option<(i64, &str, SharedCut)> {
    let cut_ms = get_n::<i64>(item, "cut_ms")?;
    let by = get_s(item, "cut_by").unwrap_or_default();
    let estimate = get_n::<f64>(item, "estimate")?;
    let paused_until_ms = get_n::<i64>(item, "paused_until_ms").filter(|&p| p > 0);
    Some((
        cut_ms,
        by,
        SharedCut {
            estimate,
            paused_until_ms,
        },
    ))
}
