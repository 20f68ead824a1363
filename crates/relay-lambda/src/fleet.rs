//! A dispatcher in its stack's fleet: the dispatchers of one stack (Lambda instances, or `relay
//! up --backend aws` processes) share the target's limit through the control table's item
//! (its format and calls: [`relay_aws::control`]).
//!
//! - **Who is sending.** The members seen within [`LIVE`] are the fleet: each sends `1 / N` of
//!   the fleet's rate (`RateController::set_share`), so a configured ceiling holds for the
//!   fleet.
//! - **Cuts.** A dispatcher that cut its rate on a 429, `RATE_LIMITED` or `THROTTLED` answer
//!   publishes the cut; the first of an episode wins, as one sender cuts once. The others
//!   follow it at their next heartbeat (`RateController::adopt_cut`), a `Retry-After` pause
//!   included.
//! - **What they did.** Each heartbeat carries the dispatcher's report of its last minute and
//!   its counts since the previous heartbeat.
//!
//! A dispatcher that cannot reach the table keeps its last share and its own control; the
//! target's signals still slow it down.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use relay_aws::control::{self, Counts, Heartbeat, Report, SharedCut};
pub use relay_aws::control::{LIVE, PERIOD};
use relay_aws::{Aws, AwsError};
use relay_core::now_millis;
use relay_core::rate::Cut;
use relay_dispatch::DispatcherHandle;
use tokio::time::Instant;

/// A published cut older than this is not adopted by a dispatcher that starts.
const STALE_CUT: Duration = Duration::from_secs(600);

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
    queue: Option<relay_aws::SqsQueue>,
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
    /// The circuit's shared changes last followed: (opened, answered) ms.
    circuit: (Option<i64>, Option<i64>),
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
    pub fn with_queue(mut self, queue: relay_aws::SqsQueue) -> Self {
        self.queue = Some(queue);
        self
    }

    /// This heartbeat: the report, the counts to add to the fleet's totals, and the members
    /// to forget.
    fn heartbeat(&self, now_ms: i64) -> Heartbeat {
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
            .is_some_and(|(at, _)| now_ms - at > control::MINUTE_MS)
        {
            seen.window.pop_front();
        }
        let first = seen.window.front().map_or(counts, |(_, c)| *c);
        let add = counts.since(seen.added);
        seen.added = counts;
        let forget = std::mem::take(&mut seen.forget);
        drop(seen);
        let (rate, fleet_rate, estimate) = self.rate_report();
        Heartbeat {
            member: self.id.clone(),
            report: Report {
                at_ms: now_ms,
                last_minute: counts.since(first),
                in_flight: m.in_flight,
                rate,
                fleet_rate,
                estimate,
                oldest_ms: self
                    .queue
                    .as_ref()
                    .and_then(relay_aws::SqsQueue::oldest_waiting),
                events_per_request: self.handle.events_per_request,
                max_age_ms: self.handle.max_age.as_millis() as i64,
                concurrency_limit: self.handle.concurrency_limit(),
                circuit: self.handle.circuit(),
                rate_limited: m.rate_limited,
                lessons: self.handle.lessons(relay_aws::control::LESSONS_PER_REPORT),
            },
            add,
            forget,
            circuit: self.handle.take_circuit_changes(),
        }
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
        let item = control::heartbeat(&self.aws, &self.heartbeat(now_ms)).await?;
        self.seen().forget = item.stale.clone();
        self.follow_holds(&item);
        let members = item.members;
        let share = 1.0 / members.max(1) as f64;
        let now = Instant::now();
        self.handle.with_rate(|rc| rc.set_share(now, share));

        let mine = self.handle.with_rate(|rc| rc.last_cut());
        let new_mine = mine.filter(|c| self.seen().known_cut.is_none_or(|k| c.at > k));
        if let Some(cut) = new_mine {
            self.publish(cut, now, now_ms).await?;
            self.seen().known_cut = Some(cut.at);
        } else if let Some(shared) = &item.cut {
            self.follow(shared, members, now, now_ms);
        }
        if let Some(cut) = &item.cut {
            self.seen().shared_cut_ms = Some(cut.at_ms);
        }
        Ok(FleetView {
            members,
            cut_ms: item.cut.map(|c| c.at_ms),
            share,
        })
    }

    /// Follows the operator's pause, and what other dispatchers found of the target: its
    /// circuit, and its concurrency limit.
    fn follow_holds(&self, item: &control::FleetItem) {
        self.handle.set_pause(item.pause.clone());
        if let Some(&cap) = item.concurrency_limits.iter().min() {
            self.handle.adopt_concurrency_limit(cap);
        }
        let circuit = (item.circuit_opened_ms, item.circuit_answered_ms);
        let mut seen = self.seen();
        if seen.circuit != circuit {
            seen.circuit = circuit;
            drop(seen);
            self.handle.follow_circuit(circuit.0, circuit.1);
        }
    }

    /// Adopts another dispatcher's cut, if it is newer than any seen and not stale.
    fn follow(&self, cut: &SharedCut, members: usize, now: Instant, now_ms: i64) {
        let newer = self
            .seen()
            .shared_cut_ms
            .is_none_or(|seen| cut.at_ms > seen);
        let fresh = now_ms - cut.at_ms < STALE_CUT.as_millis() as i64;
        if !(newer && fresh && cut.by != self.id) {
            return;
        }
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
        tracing::info!(by = %cut.by, estimate = cut.estimate, members, "following the fleet's cut");
        self.seen().known_cut = adopted.map(|c| c.at);
    }

    /// Publishes this dispatcher's cut unless another of the same episode (within a second)
    /// is there already; then ours stands locally, nothing more.
    async fn publish(&self, cut: Cut, now: Instant, now_ms: i64) -> Result<(), AwsError> {
        let shared = SharedCut {
            at_ms: now_ms - now.saturating_duration_since(cut.at).as_millis() as i64,
            by: self.id.clone(),
            estimate: cut.estimate,
            paused_until_ms: cut
                .paused_until
                .map(|until| now_ms + until.saturating_duration_since(now).as_millis() as i64),
        };
        if control::publish_cut(&self.aws, &shared).await? {
            tracing::info!(estimate = cut.estimate, "cut the fleet's rate");
        }
        Ok(())
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
        if let Err(e) = control::leave(&self.aws, &self.id).await {
            tracing::debug!(error = %e, "could not leave the fleet; the heartbeat ages out");
        }
    }
}
