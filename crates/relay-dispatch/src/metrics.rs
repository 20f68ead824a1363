//! Counters the dispatcher keeps for progress reports and `relay status`.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use relay_core::budget::Budget;
use relay_core::{Outcome, Settlement, telemetry};
use serde::Serialize;

#[derive(Debug, Default)]
pub struct Metrics {
    attempts: AtomicU64,
    in_flight: AtomicU64,
    delivered: AtomicU64,
    rate_limited: AtomicU64,
    transient: AtomicU64,
    dead: AtomicU64,
}

/// A consistent-enough copy of the counters (each read atomically, not all at one instant).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MetricsSnapshot {
    pub attempts: u64,
    pub in_flight: u64,
    pub delivered: u64,
    pub rate_limited: u64,
    pub transient: u64,
    /// Deliveries dead-lettered (permanent answer, attempts exhausted or max age).
    pub dead: u64,
    /// Current sending rate, requests/s.
    pub rate: f64,
    /// Target limit estimated at the last rate-limit signal, requests/s.
    pub estimated_limit: Option<f64>,
    /// The budget the target last announced in its answers, if it does.
    pub announced: Option<Budget>,
}

impl Metrics {
    pub(crate) fn started(&self) {
        self.attempts.fetch_add(1, Relaxed);
        self.in_flight.fetch_add(1, Relaxed);
    }

    /// Requests started but given back unanswered (a batch refused whole, sent again alone).
    pub(crate) fn gave_back(&self, n: usize) {
        self.attempts.fetch_sub(n as u64, Relaxed);
        self.in_flight.fetch_sub(n as u64, Relaxed);
    }

    pub(crate) fn finished(&self, outcome: &Outcome, settlement: &Settlement) {
        self.in_flight.fetch_sub(1, Relaxed);
        // Answers by kind; `dead` counts dead-lettered deliveries, whatever the last answer was.
        let answer = match outcome {
            Outcome::Delivered => Some(&self.delivered),
            Outcome::RateLimited { .. } => Some(&self.rate_limited),
            Outcome::Transient { .. } => Some(&self.transient),
            Outcome::Permanent { .. } => None,
        };
        if let Some(counter) = answer {
            counter.fetch_add(1, Relaxed);
        }
        // The same for an installed recorder (Prometheus), which cannot take an attempt back:
        // it counts answered attempts only.
        ::metrics::counter!(telemetry::ATTEMPTS, "outcome" => outcome.kind().as_str()).increment(1);
        if matches!(outcome, Outcome::Delivered) {
            ::metrics::counter!(telemetry::DELIVERED).increment(1);
        }
        if matches!(settlement, Settlement::Dead { .. }) {
            self.dead.fetch_add(1, Relaxed);
            ::metrics::counter!(telemetry::DEAD).increment(1);
        }
    }

    pub fn snapshot(
        &self,
        rate: f64,
        estimated_limit: Option<f64>,
        announced: Option<Budget>,
    ) -> MetricsSnapshot {
        MetricsSnapshot {
            attempts: self.attempts.load(Relaxed),
            in_flight: self.in_flight.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            rate_limited: self.rate_limited.load(Relaxed),
            transient: self.transient.load(Relaxed),
            dead: self.dead.load(Relaxed),
            rate,
            estimated_limit,
            announced,
        }
    }
}
