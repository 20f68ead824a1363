//! Adaptive rate control: a token bucket whose rate follows the target's signals.
//!
//! Without a known limit the controller starts slowly and doubles its rate each second while the
//! bucket is the bottleneck and answers are clean (slow start). The first rate-limit signal ends
//! slow start: the limit is estimated from the *delivered* rate (what the target actually let
//! through), the rate drops just under it, and from then on it climbs back quickly to that
//! estimate and probes above it by 1 % a second. Each further signal re-estimates, from the
//! deliveries of the whole cycle since the previous one: a shorter window would see only the
//! burst a target's bucket allows after a pause and overestimate. `Retry-After` pauses all
//! sending. A configured ceiling caps everything.
//!
//! Time is passed in (tokio's `Instant`), so the behaviour is tested with paused time.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How far under the estimated limit the rate drops on a rate-limit signal.
const CUT: f64 = 0.95;
/// Rate-limit answers within this long of a cut belong to the same episode (requests already in
/// flight at the old rate); reacting to each would collapse the rate.
const EPISODE: Duration = Duration::from_secs(1);
/// Shortest window over which the delivered rate is measured (and the only one in slow start).
const MIN_WINDOW: Duration = Duration::from_secs(2);
/// Longest window: a cycle between two rate-limit signals, at most this long, is measured whole.
const MAX_WINDOW: Duration = Duration::from_secs(30);
/// Deliveries are counted in slots of this length.
const SLOT: Duration = Duration::from_millis(100);
/// Probing growth above the last estimate, per second.
const PROBE_PER_SEC: f64 = 1.01;
/// Half the gap to the last estimate closes every this long.
const RECOVER_HALF_LIFE: Duration = Duration::from_millis(500);

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

#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    SlowStart,
    /// `estimate` is the limit measured at the last rate-limit signal.
    Steady {
        estimate: f64,
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
    last_growth: Instant,
    /// Set when a caller had to wait for a token: only then is the rate the bottleneck and worth
    /// raising (an idle relay must not talk itself into a huge rate).
    starved: bool,
    /// Deliveries per [`SLOT`], oldest first, covering at most [`MAX_WINDOW`].
    delivered: VecDeque<(Instant, u32)>,
    /// When the controller started: a window never reaches back before it.
    born: Instant,
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
            last_growth: now,
            starved: false,
            delivered: VecDeque::new(),
            born: now,
        }
    }

    /// The current sending rate, requests/s.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The limit estimated at the last rate-limit signal, if any.
    pub fn estimate(&self) -> Option<f64> {
        match self.phase {
            Phase::SlowStart => None,
            Phase::Steady { estimate } => Some(estimate),
        }
    }

    fn burst(&self) -> f64 {
        // 100 ms worth: enough to absorb timer jitter, too little to trip a strict target.
        (self.rate / 10.0).max(1.0)
    }

    fn refill(&mut self, now: Instant) {
        let dt = now
            .saturating_duration_since(self.last_refill)
            .as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst());
        self.last_refill = now;
    }

    /// Takes a token, or says when to ask again.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), Instant> {
        if now < self.paused_until {
            return Err(self.paused_until);
        }
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            self.starved = true;
            let wait = (1.0 - self.tokens) / self.rate;
            Err(now + Duration::from_secs_f64(wait))
        }
    }

    /// A clean delivery: maybe raise the rate.
    pub fn on_delivered(&mut self, now: Instant) {
        match self.delivered.back_mut() {
            Some((start, n)) if now.saturating_duration_since(*start) < SLOT => *n += 1,
            _ => self.delivered.push_back((now, 1)),
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
        self.rate = match self.phase {
            Phase::SlowStart => self.rate * 2f64.powf(dt),
            // Within half a percent counts as there: the approach is asymptotic and would never
            // hand over to probing otherwise.
            Phase::Steady { estimate } if self.rate < estimate * 0.995 => {
                let closed = 1.0 - 0.5f64.powf(dt / RECOVER_HALF_LIFE.as_secs_f64());
                (self.rate + (estimate - self.rate) * closed).min(estimate)
            }
            Phase::Steady { .. } => self.rate * PROBE_PER_SEC.powf(dt),
        };
        self.clamp();
    }

    /// The target said "slow down" (429, `RATE_LIMITED`, …).
    pub fn on_rate_limited(&mut self, now: Instant, retry_after: Option<Duration>) {
        if let Some(wait) = retry_after {
            self.paused_until = self.paused_until.max(now + wait);
        }
        if self
            .last_cut
            .is_some_and(|cut| now.saturating_duration_since(cut) < EPISODE)
        {
            return;
        }
        self.trim(now);
        let window = self.last_cut.map_or(MIN_WINDOW, |cut| {
            now.saturating_duration_since(cut)
                .clamp(MIN_WINDOW, MAX_WINDOW)
        });
        let delivered = self.delivered_rate(now, window);
        let estimate = if delivered > 0.0 {
            delivered.min(self.rate)
        } else {
            self.rate / 2.0
        };
        self.phase = Phase::Steady { estimate };
        self.rate = estimate * CUT;
        self.tokens = 0.0;
        self.last_cut = Some(now);
        self.clamp();
    }

    /// Delivered requests per second over the last `window`. Quiet time inside the window
    /// (a `Retry-After` pause) counts: the point is what the target sustains.
    fn delivered_rate(&self, now: Instant, window: Duration) -> f64 {
        let count: u64 = self
            .delivered
            .iter()
            .rev()
            .take_while(|(start, _)| now.saturating_duration_since(*start) <= window)
            .map(|(_, n)| u64::from(*n))
            .sum();
        let span = now
            .saturating_duration_since(self.born)
            .clamp(Duration::from_millis(250), window);
        count as f64 / span.as_secs_f64()
    }

    fn trim(&mut self, now: Instant) {
        while self
            .delivered
            .front()
            .is_some_and(|(t, _)| now.saturating_duration_since(*t) > MAX_WINDOW)
        {
            self.delivered.pop_front();
        }
    }

    fn clamp(&mut self) {
        let top = self.config.ceiling.unwrap_or(self.config.max);
        self.rate = self.rate.clamp(self.config.floor.min(top), top);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token-bucket target: `limit`/s with `burst`, answering true when it accepts.
    struct Target {
        limit: f64,
        burst: f64,
        tokens: f64,
        last: Instant,
    }

    impl Target {
        fn new(limit: f64, burst: f64, now: Instant) -> Self {
            Target {
                limit,
                burst,
                tokens: burst,
                last: now,
            }
        }
        fn admit(&mut self, now: Instant) -> bool {
            let dt = now.saturating_duration_since(self.last).as_secs_f64();
            self.tokens = (self.tokens + dt * self.limit).min(self.burst);
            self.last = now;
            if self.tokens >= 1.0 {
                self.tokens -= 1.0;
                true
            } else {
                false
            }
        }
    }

    /// Drives the controller against the target for `secs` with an endless backlog and answers
    /// that arrive `latency` after sending; returns (accepted, limited) counted after `warmup`.
    async fn drive(
        rc: &mut RateController,
        target: &mut Target,
        secs: u64,
        warmup: u64,
        latency: Duration,
    ) -> (u64, u64) {
        let start = Instant::now();
        let mut pending: VecDeque<(Instant, bool)> = VecDeque::new();
        let (mut ok, mut limited) = (0u64, 0u64);
        while start.elapsed() < Duration::from_secs(secs) {
            let now = Instant::now();
            while pending.front().is_some_and(|(at, _)| *at <= now) {
                let (_, accepted) = pending.pop_front().unwrap();
                let counted = start.elapsed() >= Duration::from_secs(warmup);
                if accepted {
                    rc.on_delivered(now);
                    ok += u64::from(counted);
                } else {
                    rc.on_rate_limited(now, Some(Duration::from_secs(1)));
                    limited += u64::from(counted);
                }
            }
            match rc.try_acquire(now) {
                Ok(()) => pending.push_back((now + latency, target.admit(now))),
                Err(at) => {
                    let next = pending.front().map_or(at, |(t, _)| (*t).min(at));
                    tokio::time::sleep_until(next.max(now + Duration::from_millis(1))).await;
                }
            }
        }
        (ok, limited)
    }

    #[tokio::test(start_paused = true)]
    async fn slow_start_doubles_while_the_bucket_is_the_bottleneck() {
        let mut rc = RateController::new(RateConfig::default(), Instant::now());
        let mut target = Target::new(1e9, 1e9, Instant::now());
        drive(&mut rc, &mut target, 3, 0, Duration::from_millis(5)).await;
        assert!(
            (60.0..=100.0).contains(&rc.rate()),
            "rate after 3 s: {}",
            rc.rate()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_relay_does_not_raise_its_rate() {
        let mut rc = RateController::new(RateConfig::default(), Instant::now());
        for _ in 0..100 {
            tokio::time::advance(Duration::from_millis(200)).await;
            rc.try_acquire(Instant::now()).unwrap();
            rc.on_delivered(Instant::now());
        }
        assert_eq!(rc.rate(), 10.0);
    }

    #[tokio::test(start_paused = true)]
    async fn converges_on_an_unknown_limit_with_few_rate_limited_answers() {
        for latency_ms in [1, 200] {
            let mut rc = RateController::new(RateConfig::default(), Instant::now());
            let mut target = Target::new(50.0, 50.0, Instant::now());
            let (ok, limited) = drive(
                &mut rc,
                &mut target,
                120,
                30,
                Duration::from_millis(latency_ms),
            )
            .await;
            let share = ok as f64 / (90.0 * 50.0);
            let limited_share = limited as f64 / (ok + limited) as f64;
            println!(
                "{latency_ms} ms: {share:.3} of the limit, {limited_share:.4} rate-limited, estimate {:?}",
                rc.estimate()
            );
            assert!(
                share >= 0.93,
                "{latency_ms} ms: delivered {share:.3} of the limit"
            );
            assert!(
                limited_share <= 0.03,
                "{latency_ms} ms: {limited_share:.3} rate-limited"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_pauses_sending() {
        let mut rc = RateController::new(
            RateConfig {
                ceiling: Some(100.0),
                ..Default::default()
            },
            Instant::now(),
        );
        rc.on_rate_limited(Instant::now(), Some(Duration::from_secs(5)));
        let until = rc.try_acquire(Instant::now()).unwrap_err();
        assert_eq!(until, Instant::now() + Duration::from_secs(5));
        tokio::time::advance(Duration::from_secs(5)).await;
        tokio::time::advance(Duration::from_millis(50)).await;
        assert!(rc.try_acquire(Instant::now()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_ceiling_is_never_exceeded() {
        let mut rc = RateController::new(
            RateConfig {
                ceiling: Some(20.0),
                ..Default::default()
            },
            Instant::now(),
        );
        let mut target = Target::new(1e9, 1e9, Instant::now());
        let (ok, _) = drive(&mut rc, &mut target, 11, 1, Duration::from_millis(1)).await;
        assert!(rc.rate() <= 20.0);
        assert!(ok <= 10 * 20 + 2, "{ok} sent in 10 s under a 20/s ceiling");
    }

    #[tokio::test(start_paused = true)]
    async fn one_cut_per_episode() {
        let mut rc = RateController::new(
            RateConfig {
                ceiling: Some(100.0),
                ..Default::default()
            },
            Instant::now(),
        );
        for _ in 0..10 {
            rc.on_rate_limited(Instant::now(), None);
        }
        assert_eq!(rc.rate(), 50.0 * CUT);
    }
}
