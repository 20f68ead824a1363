//! The relay's metrics: one table of names, units and help, the same for every process that
//! records them (ingest, dispatcher, store) and every exporter that shows them (Prometheus on
//! `/metrics`). Names follow the Prometheus conventions: base units in the name (`_seconds`),
//! `_total` on counters. Recording goes through the `metrics` facade: until a process installs
//! a recorder (`relay up --metrics`), each call is a no-op, as in the Lambdas, which keep EMF.

use metrics::{Unit, counter, gauge};

use crate::hold::CircuitView;
use crate::ops::StatusReport;

/// Events stored on their first acknowledgement (`202 accepted`).
pub const ACCEPTED: &str = "relay_events_accepted_total";
/// Events answered `200 duplicate`: the same id and payload again, not stored twice.
pub const DUPLICATES: &str = "relay_events_duplicate_total";
/// Requests refused whole, and batch items refused one by one, by `reason` (the error code of
/// the answer: `unauthorized`, `invalid_event`, `store_failing`, …).
pub const REFUSED: &str = "relay_ingest_refused_total";
/// Time from a request's arrival to its 2xx, by `route` (`/events`, `/events/batch`).
pub const ACK_SECONDS: &str = "relay_ingest_ack_duration_seconds";
/// Events sent to the target, by `outcome` (`delivered`, `rate_limited`, `transient`,
/// `permanent`): one per event per attempt, so a batch of ten counts ten.
pub const ATTEMPTS: &str = "relay_delivery_attempts_total";
/// Time from sending a request to the target to its answer (or failure), one per request.
pub const ATTEMPT_SECONDS: &str = "relay_delivery_attempt_duration_seconds";
/// Events the target took.
pub const DELIVERED: &str = "relay_events_delivered_total";
/// Events dead-lettered: a permanent answer, attempts exhausted, or past their max age.
pub const DEAD: &str = "relay_events_dead_total";
/// One `fdatasync` of the local store's journal.
pub const FLUSH_SECONDS: &str = "relay_store_flush_duration_seconds";
/// Events answered 2xx before their flush landed (`--durability deadline` while the disk
/// stalled): written, so they survive a crash, but not yet a power cut.
pub const ACKED_BEFORE_FLUSH: &str = "relay_store_acked_before_flush_total";
/// Events waiting for delivery: queued and in flight.
pub const BACKLOG: &str = "relay_backlog_events";
/// Age of the oldest event waiting for delivery (0 with no backlog).
pub const OLDEST_AGE: &str = "relay_backlog_oldest_age_seconds";
/// When the backlog will have drained at the learned pace (0 with none, +Inf with no pace).
pub const DRAIN_FORECAST: &str = "relay_backlog_drain_forecast_seconds";
/// Dead letters held, waiting for a redrive or a purge.
pub const DEAD_LETTERS: &str = "relay_dead_letters";
/// Requests to the target in flight now.
pub const IN_FLIGHT: &str = "relay_delivery_in_flight";
/// The pace the dispatcher sends at now.
pub const RATE: &str = "relay_delivery_rate_requests_per_second";
/// The target's limit as relay has learned it from 429s, Retry-After and budgets.
pub const LEARNED_RATE: &str = "relay_target_learned_rate_requests_per_second";
/// Requests the target takes at once, as relay has learned it.
pub const LEARNED_CONCURRENCY: &str = "relay_target_learned_concurrency";
/// 1 while the target's circuit is open (relay probes instead of sending).
pub const CIRCUIT_OPEN: &str = "relay_target_circuit_open";
/// 1 while an operator has paused delivery.
pub const PAUSED: &str = "relay_paused";
/// Always 1, with the relay's `version`.
pub const BUILD_INFO: &str = "relay_build_info";

/// What kind of metric a name is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric: its name, kind, unit, labels and help.
#[derive(Debug, Clone, Copy)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub unit: Option<Unit>,
    pub labels: &'static [&'static str],
    pub help: &'static str,
}

const fn metric(
    name: &'static str,
    kind: Kind,
    unit: Option<Unit>,
    labels: &'static [&'static str],
    help: &'static str,
) -> Metric {
    Metric {
        name,
        kind,
        unit,
        labels,
        help,
    }
}

/// Every metric relay records; docs/telemetry.md maps each to its EMF twin on AWS.
pub const METRICS: &[Metric] = &[
    metric(
        ACCEPTED,
        Kind::Counter,
        None,
        &[],
        "Events stored on their first acknowledgement.",
    ),
    metric(
        DUPLICATES,
        Kind::Counter,
        None,
        &[],
        "Events sent again with the same id and payload; stored once.",
    ),
    metric(
        REFUSED,
        Kind::Counter,
        None,
        &["reason"],
        "Ingest requests refused whole, and batch items refused one by one, by error code.",
    ),
    metric(
        ACK_SECONDS,
        Kind::Histogram,
        Some(Unit::Seconds),
        &["route"],
        "Time from an ingest request's arrival to its 2xx.",
    ),
    metric(
        ATTEMPTS,
        Kind::Counter,
        None,
        &["outcome"],
        "Events sent to the target, by what the answer meant for each.",
    ),
    metric(
        ATTEMPT_SECONDS,
        Kind::Histogram,
        Some(Unit::Seconds),
        &[],
        "Time from sending a request to the target to its answer.",
    ),
    metric(
        DELIVERED,
        Kind::Counter,
        None,
        &[],
        "Events the target took.",
    ),
    metric(DEAD, Kind::Counter, None, &[], "Events dead-lettered."),
    metric(
        FLUSH_SECONDS,
        Kind::Histogram,
        Some(Unit::Seconds),
        &[],
        "One fdatasync of the local store's journal.",
    ),
    metric(
        ACKED_BEFORE_FLUSH,
        Kind::Counter,
        None,
        &[],
        "Events answered 2xx before their flush landed (--durability deadline).",
    ),
    metric(
        BACKLOG,
        Kind::Gauge,
        None,
        &[],
        "Events waiting for delivery: queued and in flight.",
    ),
    metric(
        OLDEST_AGE,
        Kind::Gauge,
        Some(Unit::Seconds),
        &[],
        "Age of the oldest event waiting for delivery.",
    ),
    metric(
        DRAIN_FORECAST,
        Kind::Gauge,
        Some(Unit::Seconds),
        &[],
        "Time until the backlog has drained at the learned pace (+Inf with no pace).",
    ),
    metric(
        DEAD_LETTERS,
        Kind::Gauge,
        None,
        &[],
        "Dead letters held, waiting for a redrive or a purge.",
    ),
    metric(
        IN_FLIGHT,
        Kind::Gauge,
        None,
        &[],
        "Events in requests to the target now.",
    ),
    metric(
        RATE,
        Kind::Gauge,
        None,
        &[],
        "The pace the dispatcher sends at, requests per second.",
    ),
    metric(
        LEARNED_RATE,
        Kind::Gauge,
        None,
        &[],
        "The target's limit as relay learned it, requests per second.",
    ),
    metric(
        LEARNED_CONCURRENCY,
        Kind::Gauge,
        None,
        &[],
        "Requests the target takes at once, as relay learned it.",
    ),
    metric(
        CIRCUIT_OPEN,
        Kind::Gauge,
        None,
        &[],
        "1 while the target's circuit is open.",
    ),
    metric(
        PAUSED,
        Kind::Gauge,
        None,
        &[],
        "1 while an operator has paused delivery.",
    ),
    metric(
        BUILD_INFO,
        Kind::Gauge,
        None,
        &["version"],
        "Always 1, labelled with the relay's version.",
    ),
];

/// Gives the recorder every metric's help and unit, so `/metrics` shows them from the start.
pub fn describe() {
    for m in METRICS {
        let (name, help) = (m.name, m.help);
        match (m.kind, m.unit) {
            (Kind::Counter, Some(unit)) => metrics::describe_counter!(name, unit, help),
            (Kind::Counter, None) => metrics::describe_counter!(name, help),
            (Kind::Gauge, Some(unit)) => metrics::describe_gauge!(name, unit, help),
            (Kind::Gauge, None) => metrics::describe_gauge!(name, help),
            (Kind::Histogram, Some(unit)) => metrics::describe_histogram!(name, unit, help),
            (Kind::Histogram, None) => metrics::describe_histogram!(name, help),
        }
    }
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    // Counters show from the first scrape, at zero, so a rate() over them starts at once.
    for name in [ACCEPTED, DUPLICATES, DELIVERED, DEAD, ACKED_BEFORE_FLUSH] {
        counter!(name).absolute(0);
    }
}

/// Sets the gauges from a status report (the backlog, its age and forecast, dead letters, and
/// what the live dispatcher reported: pace, learned limits, circuit, pause).
pub fn record_status(report: &StatusReport) {
    let backlog = report.queued + report.in_flight;
    gauge!(BACKLOG).set(backlog as f64);
    gauge!(DEAD_LETTERS).set(report.dead as f64);
    let forecast = report.forecast();
    gauge!(OLDEST_AGE).set(forecast.oldest_age_ms.unwrap_or(0).max(0) as f64 / 1000.0);
    let drain = match (backlog, forecast.drain_ms) {
        (0, _) => 0.0,
        (_, Some(ms)) => ms.max(0) as f64 / 1000.0,
        (_, None) => f64::INFINITY,
    };
    gauge!(DRAIN_FORECAST).set(drain);
    gauge!(PAUSED).set(if report.pause.is_some() { 1.0 } else { 0.0 });
    // What no running dispatcher reports, or one has not learned yet, is NaN: a gap in a graph,
    // never a made-up zero.
    let dispatcher = report.live_dispatcher();
    gauge!(RATE).set(dispatcher.map_or(0.0, |d| d.rate));
    gauge!(IN_FLIGHT).set(dispatcher.map_or(0.0, |d| d.in_flight as f64));
    let learned = dispatcher.and_then(|d| d.estimated_limit);
    gauge!(LEARNED_RATE).set(learned.unwrap_or(f64::NAN));
    let concurrency = dispatcher.and_then(|d| d.concurrency_limit);
    gauge!(LEARNED_CONCURRENCY).set(concurrency.map_or(f64::NAN, f64::from));
    let open = dispatcher.is_some_and(|d| matches!(d.circuit, Some(CircuitView::Open { .. })));
    gauge!(CIRCUIT_OPEN).set(if open { 1.0 } else { 0.0 });
}

/// One step of an event's life, for an exporter of traces (`relay up --otlp-endpoint`): one
/// trace per event, from its receipt to each attempt and the settlement after it.
#[derive(Debug, Clone, Copy)]
pub enum Step<'a> {
    /// Acknowledged `202 accepted` at `at`, `took` after its request arrived.
    Received {
        event_id: &'a str,
        at: std::time::SystemTime,
        took: std::time::Duration,
    },
    /// One attempt to deliver it, in a request that carried `events_in_request` events.
    Attempted {
        event_id: &'a str,
        attempt: &'a crate::AttemptRecord,
        events_in_request: usize,
    },
    /// What the attempt settled, written to the store at `at`, `took` after it started.
    Settled {
        event_id: &'a str,
        settlement: &'a crate::Settlement,
        at: std::time::SystemTime,
        took: std::time::Duration,
    },
}

/// Where the steps go. Like the metrics' recorder: none until a process installs one.
pub trait Steps: Send + Sync + std::fmt::Debug {
    fn step(&self, step: Step<'_>);
}

static STEPS: std::sync::OnceLock<Box<dyn Steps>> = std::sync::OnceLock::new();

/// Installs the process's exporter of steps; a second one is refused.
pub fn set_steps(steps: Box<dyn Steps>) -> Result<(), Box<dyn Steps>> {
    STEPS.set(steps)
}

/// Hands a step to the exporter, if one is installed.
pub fn step(step: Step<'_>) {
    if let Some(steps) = STEPS.get() {
        steps.step(step);
    }
}
