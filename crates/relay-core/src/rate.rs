//! Adaptive rate control: a token bucket whose rate follows the target's signals, and a pacer
//! for the budget a target announces.
//!
//! Without a known limit the controller starts slowly and doubles its rate each second while
//! it is the bottleneck and answers are clean (slow start). A rate-limit signal (429,
//! `RATE_LIMITED`, `THROTTLED`) estimates the limit as what the target actually let through over
//! the last second of sending (pauses excluded: counting them made one early estimate 2.5/s
//! against a real 50/s), and cuts the rate to 90 % of it. The rate then climbs back along a
//! cubic curve, as TCP CUBIC does: quickly at first, flat near the estimate, where it probes
//! gently, then faster and faster the longer answers stay clean. Once it is clearly above the
//! old estimate (×1.5) the limit has risen, and it doubles per second again. So a strict limit
//! is held at ~97 %, a rise is found in seconds, and a fall in one or two round trips.
//!
//! One cut per episode: a refusal of a request sent before the last cut was in flight at the
//! old rate and changes nothing. A refusal of a request sent soon after a cut means the cut was
//! not enough: cut again from a new measurement. When that is not enough either, honour
//! `Retry-After` by pausing all sending (the refused event itself always waits it out).
//! Pausing on every refusal would idle a strict target a second per probe, and refill a bursty
//! one, hiding its limit.
//!
//! When the target announces its budget (`relay_core::budget`), sending is paced by that
//! instead: the remaining requests spread evenly until the window resets, or a bucket of the
//! announced size refilled at the announced rate. Requests sent after the answer that carried
//! the budget count against it. A configured ceiling caps everything.
//!
//! A fleet of dispatchers (Lambda instances) shares one target. Each instance's controller then
//! reasons in fleet units: its rate is the fleet's, it sends its [`share`](RateController::set_share)
//! of it, and each of its deliveries counts for the instances it stands for. Cuts one instance
//! makes reach the others through [`adopt_cut`](RateController::adopt_cut), so the fleet cuts
//! once per episode, as one sender would.
//!
//! Time is passed in (tokio's `Instant`), so the behaviour is tested with paused time.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::budget::Budget;

/// The rate after a cut, as a share of the estimated limit.
const BETA: f64 = 0.9;
/// Seconds of clean sending for the rate to climb back to the estimate after a cut.
const RECOVER_SECS: f64 = 2.0;
/// Past this multiple of the estimate with answers still clean, slow start again.
const RESTART_ABOVE: f64 = 1.5;
/// The delivered rate at a signal is measured over the cycle since the previous cut, at least
/// this long (when there is that much history)…
const MEASURE_MIN: Duration = Duration::from_secs(1);
/// …and at most this long. A short window sees only the burst a deep bucket lets through and
/// overestimates; the whole cycle dilutes it.
const MEASURE_MAX: Duration = Duration::from_secs(10);
/// Refusals of requests sent this soon after a cut took effect mean the cut was not enough.
const ESCALATE: Duration = Duration::from_secs(1);
/// Answers since a cut needed before their accepted share is trusted as an estimate.
const RATIO_SAMPLE: u32 = 10;
/// Cuts in a row that were not enough before `Retry-After` pauses all sending.
const PAUSE_AFTER: u32 = 2;
/// Deliveries are counted in slots of this length.
const SLOT: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateConfig {
    /// Never send faster than this (requests/s).
    pub ceiling: Option<f64>,
    /// Starting rate when no ceiling is given.
    pub initial: f64,
    /// Never slow below this, so a recovering target is noticed.
    pub floor: f64,
    /// Highest rate ever tried when no ceiling is given.
    pub max: f64,
}

impl Default for RateConfig {
    fn default() -> Self {
        RateConfig {
            ceiling: None,
            initial: 10.0,
            floor: 0.5,
            max: 10_000.0,
        }
    }
}

/// One request's permission to go: when it was sent, and its place in the sending order.
/// Answers come back with it, so the controller knows what was sent before and after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket {
    at: Instant,
    seq: u64,
}

impl Ticket {
    pub fn sent_at(&self) -> Instant {
        self.at
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    SlowStart,
    /// Climbing back after a cut: `estimate` is the limit measured then, `climbed` the seconds
    /// of clean, rate-bound sending since.
    Probing {
        estimate: f64,
        climbed: f64,
    },
}

/// An announced budget, as the pacer keeps it.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Announced {
    budget: Budget,
    /// The ticket of the answer that carried it: older answers are stale.
    seq: u64,
    pacer: Pacer,
    /// When a window was last seen to begin: the answer whose `remaining` jumped back up.
    /// Resets come in whole seconds, rounded up; with the window's length, this phase says
    /// when the next one really is.
    window_began: Option<Instant>,
    /// The window's length as seen between renewals, when the target does not name it
    /// (`X-RateLimit-*`): the shortest gap, to a whole second when it is near one.
    window_seen: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Pacer {
    /// `allowance` more requests until `until`, spread evenly; then, if known, `limit` per
    /// `window`.
    Window {
        allowance: f64,
        until: Instant,
        next: Instant,
        renew: Option<(f64, Duration)>,
    },
    /// A token bucket mirroring the target's.
    Bucket {
        tokens: f64,
        refill: f64,
        max: f64,
        last: Instant,
    },
}

#[derive(Debug)]
pub struct RateController {
    config: RateConfig,
    rate: f64,
    phase: Phase,
    tokens: f64,
    last_refill: Instant,
    paused_until: Instant,
    last_cut: Option<Instant>,
    /// When the last cut took effect: the sending time of the first request sent after it that
    /// was accepted. Refusals before that (a fixed window still exhausted, a bucket still
    /// empty) are expected, and not held against the cut.
    settled: Option<Instant>,
    /// Cuts in a row each followed by a refusal of a request sent soon after it.
    insufficient: u32,
    /// Answers to requests sent since the last cut: accepted, refused. Once the target's own
    /// bucket is empty, their ratio is its limit over our rate, whatever the latency.
    since_cut: (u32, u32),
    last_growth: Instant,
    /// Set when a caller had to wait for a token: only then is the rate the bottleneck and worth
    /// raising (an idle relay must not talk itself into a huge rate).
    starved: bool,
    /// Deliveries per [`SLOT`], oldest first, covering at most [`MEASURE_MAX`], each weighted
    /// by the instances this one stood for when it was made (1 / share).
    delivered: VecDeque<(Instant, f64)>,
    /// A measurement never reaches back before this: start, or the end of the last pause.
    measure_from: Instant,
    /// Tickets handed out so far.
    sent: u64,
    last_sent: Option<Instant>,
    announced: Option<Announced>,
    /// This instance's part of the fleet's sending, (0, 1]: 1 when it sends alone.
    share: f64,
}

/// A cut, as the fleet shares it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cut {
    pub at: Instant,
    /// The fleet's limit estimated then, requests/s.
    pub estimate: f64,
    /// All sending stops until then, if the target asked for a pause.
    pub paused_until: Option<Instant>,
}

impl RateController {
    pub fn new(config: RateConfig, now: Instant) -> Self {
        let rate = config.ceiling.unwrap_or(config.initial).min(config.max);
        RateController {
            config,
            rate,
            phase: Phase::SlowStart,
            tokens: 1.0,
            last_refill: now,
            paused_until: now,
            last_cut: None,
            settled: None,
            insufficient: 0,
            since_cut: (0, 0),
            last_growth: now,
            starved: false,
            delivered: VecDeque::new(),
            measure_from: now,
            sent: 0,
            last_sent: None,
            announced: None,
            share: 1.0,
        }
    }

    /// This instance sends `share` of the fleet's rate (1 / the instances sending).
    pub fn set_share(&mut self, now: Instant, share: f64) {
        if share.is_nan() || share <= 0.0 || share > 1.0 || share == self.share {
            return;
        }
        self.refill(now);
        self.share = share;
        self.tokens = self.tokens.min(self.burst());
    }

    pub fn share(&self) -> f64 {
        self.share
    }

    /// The fleet's rate, requests/s: this instance sends [`share`](Self::share) of it.
    pub fn fleet_rate(&self) -> f64 {
        self.rate
    }

    /// This instance's last cut, for the rest of the fleet.
    pub fn last_cut(&self) -> Option<Cut> {
        let at = self.last_cut?;
        Some(Cut {
            at,
            estimate: self.estimate()?,
            paused_until: (self.paused_until > at).then_some(self.paused_until),
        })
    }

    /// Another instance cut the fleet's rate: follow, unless this one already cut in the same
    /// episode (within a second). A pause is always kept.
    pub fn adopt_cut(&mut self, now: Instant, cut: Cut) {
        if let Some(until) = cut.paused_until {
            self.paused_until = self.paused_until.max(until);
        }
        if self
            .last_cut
            .is_some_and(|mine| now.saturating_duration_since(mine) < ESCALATE)
            || cut.estimate.is_nan()
            || cut.estimate <= 0.0
        {
            return;
        }
        self.insufficient = 0;
        self.since_cut = (0, 0);
        self.phase = Phase::Probing {
            estimate: cut.estimate,
            climbed: 0.0,
        };
        self.rate = cut.estimate * BETA;
        self.tokens = 0.0;
        self.last_cut = Some(now);
        self.settled = None;
        self.clamp();
    }

    /// The current sending rate, requests/s: the announced budget's pace while there is one.
    pub fn rate(&self) -> f64 {
        match self.announced.map(|a| a.pacer) {
            Some(Pacer::Window {
                allowance, until, ..
            }) => {
                let since = self.last_sent.unwrap_or(self.last_refill);
                let left = until.saturating_duration_since(since);
                let pace = allowance.max(0.0) / left.as_secs_f64().max(0.001);
                self.capped(pace)
            }
            Some(Pacer::Bucket { refill, .. }) => self.capped(refill),
            None => self.rate * self.share,
        }
    }

    /// A pace of this instance's own, under its share of the ceiling.
    fn capped(&self, rate: f64) -> f64 {
        self.config
            .ceiling
            .map_or(rate, |c| rate.min(c * self.share))
    }

    /// The limit estimated at the last rate-limit signal, if any.
    pub fn estimate(&self) -> Option<f64> {
        match self.phase {
            Phase::SlowStart => None,
            Phase::Probing { estimate, .. } => Some(estimate),
        }
    }

    /// The budget the target last announced, if it does.
    pub fn announced(&self) -> Option<Budget> {
        self.announced.map(|a| a.budget)
    }

    fn burst(&self) -> f64 {
        // 100 ms worth: enough to absorb timer jitter, too little to trip a strict target.
        (self.rate * self.share / 10.0).max(1.0)
    }

    fn refill(&mut self, now: Instant) {
        let dt = now
            .saturating_duration_since(self.last_refill)
            .as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate * self.share).min(self.burst());
        self.last_refill = now;
    }

    /// Takes a token, or says when to ask again.
    pub fn try_acquire(&mut self, now: Instant) -> Result<Ticket, Instant> {
        if now < self.paused_until {
            return Err(self.paused_until);
        }
        if !self.pace_budget(now)? {
            self.refill(now);
            if self.tokens < 1.0 {
                self.starved = true;
                let wait = (1.0 - self.tokens) / (self.rate * self.share);
                return Err(now + Duration::from_secs_f64(wait));
            }
            self.tokens -= 1.0;
        }
        self.sent += 1;
        self.last_sent = Some(now);
        Ok(Ticket {
            at: now,
            seq: self.sent,
        })
    }

    /// Sending by the announced budget (and the ceiling): takes one request from it, or says
    /// when one is there. `Ok(false)`: no budget is announced, the controller's own rate rules.
    fn pace_budget(&mut self, now: Instant) -> Result<bool, Instant> {
        if self.announced.is_none() {
            return Ok(false);
        }
        if let (Some(ceiling), Some(last)) = (self.config.ceiling, self.last_sent) {
            let next = last + Duration::from_secs_f64(1.0 / (ceiling * self.share));
            if now < next {
                return Err(next);
            }
        }
        let Some(announced) = self.announced.as_mut() else {
            return Ok(false);
        };
        match &mut announced.pacer {
            Pacer::Window {
                allowance,
                until,
                next,
                renew,
            } => {
                if now >= *until {
                    match *renew {
                        // A new window of the announced size; the next answer corrects it.
                        Some((limit, window)) if !window.is_zero() => {
                            *until = first_boundary_after(*until, window, now);
                            // A share of less than one request per window adds up over
                            // windows instead of never reaching one.
                            *allowance = (allowance.max(0.0) + limit).min(limit.max(1.0));
                        }
                        // Nothing more known: back to finding the limit.
                        _ => {
                            self.announced = None;
                            return Ok(false);
                        }
                    }
                }
                if *allowance < 1.0 {
                    // Asked again within the hour, whatever the window: a new answer may come.
                    return Err((*until).min(now + MAX_BUDGET_WAIT));
                }
                if now < *next {
                    return Err((*next).min(now + MAX_BUDGET_WAIT));
                }
                let spacing = until.saturating_duration_since(now).as_secs_f64() / *allowance;
                *allowance -= 1.0;
                *next = now + Duration::from_secs_f64(spacing);
                Ok(true)
            }
            Pacer::Bucket {
                tokens,
                refill,
                max,
                last,
            } => {
                let dt = now.saturating_duration_since(*last).as_secs_f64();
                *tokens = (*tokens + dt * *refill).min(*max);
                *last = now;
                if *tokens < 1.0 {
                    let wait = (1.0 - *tokens) / refill.max(1e-6);
                    return Err(now + Duration::from_secs_f64(wait.min(60.0)));
                }
                *tokens -= 1.0;
                Ok(true)
            }
        }
    }

    /// The target announced its budget in the answer to `ticket`'s request.
    pub fn on_budget(&mut self, now: Instant, ticket: Ticket, budget: Budget) {
        if self.announced.is_some_and(|a| a.seq > ticket.seq) {
            return;
        }
        // Requests sent after that one may not be in the target's count yet.
        let since = (self.sent - ticket.seq) as f64;
        let share = self.share;
        let previous = self.announced;
        let mut window_began = previous.and_then(|a| a.window_began);
        let mut window_seen = previous.and_then(|a| a.window_seen);
        let pacer = match budget {
            Budget::Window {
                remaining,
                reset,
                limit,
                window,
            } => {
                let renewed = previous.is_some_and(|a| match a.budget {
                    Budget::Window {
                        remaining: before, ..
                    } => remaining > before,
                    Budget::Bucket { .. } => false,
                });
                if renewed {
                    if let Some(began) = window_began {
                        let gap = seen_window(now - began);
                        window_seen = Some(window_seen.map_or(gap, |w| w.min(gap)));
                    }
                    // The window began before this answer was written, so never later than
                    // now: boundaries counted from here are never early.
                    window_began = Some(now);
                }
                let window = window.or(window_seen);
                let until = match (window_began, window.filter(|w| !w.is_zero())) {
                    // The next boundary of the learned phase, if it is no later than announced.
                    (Some(began), Some(window)) => {
                        first_boundary_after(began + window, window, now).min(now + reset)
                    }
                    _ => now + reset,
                };
                Pacer::Window {
                    allowance: remaining * share - since,
                    until,
                    next: previous.map_or(now, |a| match a.pacer {
                        Pacer::Window { next, .. } => next,
                        Pacer::Bucket { .. } => now,
                    }),
                    // A limit under one request per window is no budget to renew.
                    renew: limit.filter(|l| *l >= 1.0).map(|l| l * share).zip(window),
                }
            }
            Budget::Bucket {
                available,
                refill,
                max,
            } => Pacer::Bucket {
                tokens: available * share - since,
                refill: refill * share,
                max: (max * share).max(1.0),
                last: now,
            },
        };
        self.announced = Some(Announced {
            budget,
            seq: ticket.seq,
            pacer,
            window_began,
            window_seen,
        });
    }

    /// A clean delivery: maybe raise the rate.
    pub fn on_delivered(&mut self, now: Instant, ticket: Ticket) {
        if self.last_cut.is_some_and(|cut| ticket.at >= cut) {
            match self.settled {
                None => self.settled = Some(ticket.at),
                Some(settled) if ticket.at >= settled => self.since_cut.0 += 1,
                Some(_) => {}
            }
        }
        let weight = 1.0 / self.share;
        match self.delivered.back_mut() {
            Some((start, n)) if now.saturating_duration_since(*start) < SLOT => *n += weight,
            _ => self.delivered.push_back((now, weight)),
        }
        self.trim(now);
        let dt = now
            .saturating_duration_since(self.last_growth)
            .as_secs_f64();
        self.last_growth = now;
        if !std::mem::take(&mut self.starved) || now < self.paused_until {
            return;
        }
        self.refill(now);
        match &mut self.phase {
            Phase::SlowStart => self.rate *= 2f64.powf(dt),
            Phase::Probing { estimate, climbed } => {
                *climbed += dt;
                let from_plateau = *climbed - RECOVER_SECS;
                let growth = (1.0 - BETA) / RECOVER_SECS.powi(3);
                self.rate = *estimate * (1.0 + growth * from_plateau.powi(3));
                if self.rate > *estimate * RESTART_ABOVE {
                    self.phase = Phase::SlowStart;
                }
            }
        }
        self.clamp();
    }

    /// The target said "slow down" (429, `RATE_LIMITED`, …) to `ticket`'s request.
    pub fn on_rate_limited(&mut self, now: Instant, ticket: Ticket, retry_after: Option<Duration>) {
        #[derive(PartialEq)]
        enum Verdict {
            NewEpisode,
            /// Refused soon after the last cut took effect: it was not enough.
            NotEnough,
            /// Nothing sent since the last cut was accepted, a while after it: halve.
            NothingAccepted,
        }
        let verdict = match (self.last_cut, self.settled) {
            (None, _) => Verdict::NewEpisode,
            // Sent at the old rate, before the cut: the same episode.
            (Some(cut), _) if ticket.at < cut => return,
            // Sent before the cut could take effect: expected.
            (Some(cut), None) if ticket.at.saturating_duration_since(cut) < ESCALATE => return,
            (Some(_), None) => Verdict::NothingAccepted,
            (Some(_), Some(settled)) if ticket.at < settled => return,
            (Some(_), Some(settled)) if ticket.at.saturating_duration_since(settled) < ESCALATE => {
                Verdict::NotEnough
            }
            (Some(_), Some(_)) => Verdict::NewEpisode,
        };
        let estimate = if verdict == Verdict::NewEpisode {
            self.insufficient = 0;
            match self.delivered_rate(now) {
                Some(delivered) if delivered > 0.0 => delivered.min(self.rate),
                Some(_) => self.rate / 2.0,
                None => self.rate * BETA,
            }
        } else {
            // How much it was not enough: once the target's own bucket is empty, the share of
            // requests it accepts is its limit over our rate, whatever the latency. (A deep
            // bucket's first refusal comes only once it is drained, when a delivered-rate
            // measurement still counts the burst.) Gather enough answers to say.
            self.since_cut.1 += 1;
            let (ok, refused) = self.since_cut;
            if verdict == Verdict::NotEnough && ok + refused < RATIO_SAMPLE {
                return;
            }
            self.insufficient += 1;
            if self.insufficient >= PAUSE_AFTER
                && let Some(wait) = retry_after
            {
                // Cut after cut was not enough: the target means it. Stop until it says.
                self.paused_until = self.paused_until.max(now + wait);
            }
            self.rate * f64::from(ok) / f64::from(ok + refused)
        };
        let estimate = if estimate > 0.0 {
            estimate
        } else {
            self.rate / 2.0
        };
        self.since_cut = (0, 0);
        self.phase = Phase::Probing {
            estimate,
            climbed: 0.0,
        };
        self.rate = estimate * BETA;
        self.tokens = 0.0;
        self.last_cut = Some(now);
        self.settled = None;
        if self.paused_until > now {
            self.measure_from = self.paused_until;
        }
        self.clamp();
    }

    /// Delivered requests per second, if at least a quarter second of sending can be seen:
    /// over the last second after slow start, over the cycle since the last cut while probing
    /// (paused time left out either way).
    fn delivered_rate(&mut self, now: Instant) -> Option<f64> {
        self.trim(now);
        let cycle = match (self.phase, self.last_cut) {
            // Climbing fast: only the latest second says what the target let through.
            (Phase::SlowStart, _) | (_, None) => MEASURE_MIN,
            (Phase::Probing { .. }, Some(cut)) => now.saturating_duration_since(cut),
        }
        .clamp(MEASURE_MIN, MEASURE_MAX);
        let from = now.checked_sub(cycle).unwrap_or(now).max(self.measure_from);
        let span = now.saturating_duration_since(from);
        if span < Duration::from_millis(250) {
            return None;
        }
        let count: f64 = self
            .delivered
            .iter()
            .filter(|(start, _)| *start >= from)
            .map(|(_, n)| *n)
            .sum();
        Some(count / span.as_secs_f64())
    }

    fn trim(&mut self, now: Instant) {
        while self
            .delivered
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > MEASURE_MAX)
        {
            self.delivered.pop_front();
        }
    }

    fn clamp(&mut self) {
        let top = self.config.ceiling.unwrap_or(self.config.max);
        self.rate = self.rate.clamp(self.config.floor.min(top), top);
    }
}

/// A gap seen between two window renewals, as a window: to the whole second when within 10 %
/// of one (windows are seconds, minutes, hours; the gap is late by up to a request's spacing).
fn seen_window(gap: Duration) -> Duration {
    let secs = gap.as_secs_f64();
    let whole = secs.round();
    if whole >= 1.0 && (secs - whole).abs() <= 0.1 * whole {
        Duration::from_secs_f64(whole)
    } else {
        gap
    }
}

#[cfg(test)]
mod tests;

/// Longest the budget pacer waits before looking again.
const MAX_BUDGET_WAIT: Duration = Duration::from_secs(3600);

/// The first of `first`, `first + window`, `first + 2 × window`, … after `now`: computed, not
/// stepped to, since a target may announce a window of a millisecond and go quiet for hours.
fn first_boundary_after(first: Instant, window: Duration, now: Instant) -> Instant {
    if first > now {
        return first;
    }
    let behind = now.duration_since(first).as_secs_f64();
    let steps = (behind / window.as_secs_f64()).floor() + 1.0;
    first + window.mul_f64(steps)
}
