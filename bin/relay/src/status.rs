//! `relay status`: the queue, the DLQ and the dispatcher at a glance.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use comfy_table::{Cell, Color};
use relay_core::ops::{Forecast, Operations, StatusReport};

use crate::args;
use crate::ops::{StoreArgs, relative, table};

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
    /// Refresh every INTERVAL until interrupted (default 2s).
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s", value_parser = args::duration)]
    watch: Option<Duration>,
}

pub(crate) async fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let ops = args.store.open().await?;
    loop {
        let status = ops.status().await?;
        let text = if args.json {
            serde_json::to_string_pretty(&StatusJson {
                forecast: status.forecast(),
                status: &status,
            })?
        } else {
            render(&status)
        };
        match args.watch {
            None => {
                println!("{text}");
                return Ok(ExitCode::SUCCESS);
            }
            Some(interval) => {
                // Clear the screen and redraw, like `watch`.
                print!(
                    "\x1b[2J\x1b[H{text}\n(refreshing every {}; Ctrl-C to stop)\n",
                    humantime::format_duration(interval)
                );
                std::io::stdout().flush()?;
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = crate::signals::stop_requested() => return Ok(ExitCode::SUCCESS),
                }
            }
        }
    }
}

/// `relay status --json`: the report, and the drain forecast made from it.
#[derive(serde::Serialize)]
struct StatusJson<'a> {
    #[serde(flatten)]
    status: &'a StatusReport,
    forecast: Forecast,
}

fn render(s: &StatusReport) -> String {
    let mut t = table();
    let oldest = s.oldest_waiting_received_at.map_or("—".into(), |at| {
        format!("received {}", relative(at, s.now))
    });
    let dlq = Cell::new(s.dead).fg(if s.dead > 0 { Color::Red } else { Color::Green });
    let rows: Vec<(&str, Cell)> = vec![
        ("queue depth (waiting)", Cell::new(s.queued)),
        ("in flight", Cell::new(s.in_flight)),
        ("oldest waiting event", Cell::new(oldest)),
        ("dead-letter queue", dlq),
        ("delivered (all time)", Cell::new(s.delivered)),
        ("delivered, last minute", Cell::new(s.delivered_last_minute)),
        ("retried, last minute", Cell::new(s.retried_last_minute)),
        (
            "dead-lettered, last minute",
            Cell::new(s.dead_lettered_last_minute),
        ),
        (
            "acknowledged before flush",
            Cell::new(match s.acked_before_flush {
                0 => "0".to_owned(),
                n => format!("{n} (answered while the disk stalled; see docs/runbook.md)"),
            })
            .fg(if s.acked_before_flush > 0 {
                Color::Yellow
            } else {
                Color::Reset
            }),
        ),
    ];
    for (k, v) in rows {
        t.add_row(vec![Cell::new(k), v]);
    }
    for f in &s.store_failing {
        t.add_row(vec![
            Cell::new("STORE FAILING").fg(Color::Red),
            Cell::new(format!(
                "{} since {}: {} — no event is acknowledged (ingest answers 503) until it recovers; see docs/runbook.md",
                f.part,
                relative(f.since, s.now),
                f.reason
            ))
            .fg(Color::Red),
        ]);
    }
    let dispatcher = match (&s.dispatcher, s.live_dispatcher()) {
        (_, Some(d)) => {
            let limit = d
                .estimated_limit
                .map_or("not yet known".into(), |l| format!("{l:.1}/s"));
            let batches = d
                .events_per_request
                .map_or(String::new(), |n| format!(" (up to {n} events each)"));
            let concurrency = d.concurrency_limit.map_or(String::new(), |n| {
                format!(", at most {n} requests in flight (the target's concurrency limit)")
            });
            Cell::new(format!(
                "running: pacing at ≤ {:.1} requests/s{batches}, target limit ≈ {limit}{concurrency}, {} in flight",
                d.rate, d.in_flight
            ))
            .fg(Color::Green)
        }
        (Some(d), None) => Cell::new(format!(
            "not running (last report {})",
            relative(d.reported_at, s.now)
        ))
        .fg(Color::Yellow),
        (None, _) => Cell::new("no dispatcher has run on this data directory").fg(Color::Yellow),
    };
    t.add_row(vec![Cell::new("dispatcher"), dispatcher]);
    if let Some(pause) = &s.pause {
        t.add_row(vec![
            Cell::new("PAUSED").fg(Color::Yellow),
            Cell::new(format!(
                "{} — events are accepted, nothing is sent; `relay resume` to carry on",
                pause.describe(crate::ops::timestamp)
            ))
            .fg(Color::Yellow),
        ]);
    }
    if let Some(circuit) = s.live_dispatcher().and_then(|d| d.circuit) {
        t.add_row(vec![
            Cell::new("target's circuit"),
            circuit_cell(circuit, s.now),
        ]);
    }
    t.add_row(vec![Cell::new("backlog drains in"), drain(&s.forecast())]);
    if let Some(budget) = s.dispatcher.as_ref().and_then(|d| d.announced) {
        t.add_row(vec![
            Cell::new("target's announced budget"),
            Cell::new(budget.to_string()),
        ]);
    }
    t.to_string()
}

/// The circuit breaker in words: open (the target looks down) or half open (ramping up).
fn circuit_cell(circuit: relay_core::hold::CircuitView, now: i64) -> Cell {
    use relay_core::hold::CircuitView;
    match circuit {
        CircuitView::Open { since, probe_in_ms } => Cell::new(format!(
            "OPEN since {}: the target looks down (no connection, timeouts or 5xx); one probe every few seconds, the next in {:.1} s; waiting events spend no attempts",
            relative(since, now),
            probe_in_ms as f64 / 1000.0
        ))
        .fg(Color::Red),
        CircuitView::HalfOpen { since, allowed } => Cell::new(format!(
            "half open since {}: the target answered a probe; {allowed} request(s) in flight allowed, doubling with each answer",
            relative(since, now)
        ))
        .fg(Color::Yellow),
    }
}

/// The drain forecast in words: how long at what pace, and a warning in red when events will
/// pass `--max-age` first.
fn drain(f: &Forecast) -> Cell {
    let human = |ms: i64| {
        humantime::format_duration(Duration::from_secs((ms.max(0) as u64).div_ceil(1000)))
            .to_string()
    };
    let text = match (f.backlog, f.drain_ms, f.pace_per_s) {
        (0, _, _) => "nothing waiting".to_owned(),
        (n, Some(ms), Some(pace)) => format!("{} ({n} events at {pace:.1}/s)", human(ms)),
        (n, _, _) => format!("never at this pace: {n} events wait and nothing is sending"),
    };
    if !f.passes_max_age {
        return Cell::new(text);
    }
    let max_age = f.max_age_ms.map_or(String::new(), human);
    let oldest = f.oldest_age_ms.map_or(String::new(), |age| {
        format!("; the oldest is {} old", human(age))
    });
    Cell::new(format!(
        "{text} — events will pass --max-age ({max_age}) before delivery, and a failed attempt then dead-letters them{oldest}; see docs/runbook.md"
    ))
    .fg(Color::Red)
}
