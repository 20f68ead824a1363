//! The console's last hour: a sample of the status every few seconds, from which the overview
//! draws its charts and works out rates. Kept in memory: a console started now shows the hour
//! from now on.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use relay_core::UnixMillis;
use relay_core::ops::StatusReport;
use serde::Serialize;
use tokio::sync::watch;

use super::Console;

/// How often a sample is taken, and how many are kept (an hour).
pub(super) const EVERY: Duration = Duration::from_secs(5);
const KEPT: usize = 720;

/// The figures of one moment, and the rates since the sample before.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub(crate) struct Sample {
    pub at: UnixMillis,
    /// Events waiting: queued and in flight.
    pub backlog: u64,
    pub dead_letters: u64,
    pub oldest_age_s: f64,
    /// Events accepted, delivered and refused by the target per second since the last sample
    /// (worked out from the store's counts, so never negative, and 0 for the first sample).
    pub ingest_per_s: f64,
    pub delivered_per_s: f64,
    pub refused_per_s: f64,
    /// The pace the dispatcher sends at, and the limit it learned, requests/s.
    pub rate: f64,
    pub learned_rate: Option<f64>,
    pub concurrency: Option<u32>,
    pub in_flight: u64,
    /// Totals behind the rates.
    #[serde(skip)]
    totals: Totals,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
struct Totals {
    received: u64,
    delivered: u64,
    refused: Option<u64>,
}

impl Sample {
    pub(crate) fn of(status: &StatusReport, before: Option<&Sample>) -> Sample {
        let forecast = status.forecast();
        let live = status.live_dispatcher();
        let totals = Totals {
            received: status.queued + status.in_flight + status.delivered + status.dead,
            delivered: status.delivered,
            refused: live.and_then(|d| d.rate_limited),
        };
        let per_s = |now: u64, then: u64, secs: f64| now.saturating_sub(then) as f64 / secs;
        let (ingest, delivered, refused) = match before {
            Some(b) if status.now > b.at => {
                let secs = (status.now - b.at) as f64 / 1000.0;
                let refused = match (totals.refused, b.totals.refused) {
                    (Some(now), Some(then)) => per_s(now, then, secs),
                    _ => 0.0,
                };
                (
                    per_s(totals.received, b.totals.received, secs),
                    per_s(totals.delivered, b.totals.delivered, secs),
                    refused,
                )
            }
            _ => (0.0, 0.0, 0.0),
        };
        Sample {
            at: status.now,
            backlog: forecast.backlog,
            dead_letters: status.dead,
            oldest_age_s: forecast.oldest_age_ms.unwrap_or(0) as f64 / 1000.0,
            ingest_per_s: ingest,
            delivered_per_s: delivered,
            refused_per_s: refused,
            rate: live.map_or(0.0, |d| d.rate),
            learned_rate: live.and_then(|d| d.estimated_limit),
            concurrency: live.and_then(|d| d.concurrency_limit),
            in_flight: live.map_or(0, |d| d.in_flight),
            totals,
        }
    }
}

#[derive(Debug, Default)]
pub(crate) struct History {
    samples: Mutex<VecDeque<Sample>>,
}

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Sample>> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn last(&self) -> Option<Sample> {
        self.lock().back().copied()
    }

    pub(crate) fn push(&self, sample: Sample) {
        let mut samples = self.lock();
        samples.push_back(sample);
        while samples.len() > KEPT {
            samples.pop_front();
        }
    }

    pub(crate) fn all(&self) -> Vec<Sample> {
        self.lock().iter().copied().collect()
    }
}

/// Takes a sample every [`EVERY`] until `stop`; a store that cannot be read skips one.
pub(super) async fn sample(console: Arc<Console>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        match console.status().await {
            Ok(status) => {
                let sample = Sample::of(&status, console.history.last().as_ref());
                console.history.push(sample);
            }
            Err(e) => tracing::debug!(error = %e, "console: cannot sample the status"),
        }
    }
}
